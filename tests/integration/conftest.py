"""Fixtures for tests that run real workers: a model checkpoint, a catalog, worker processes."""

from pathlib import Path

import pytest
import torch
from support import Worker, keyed, produce

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.encoder import DEFAULT_ENCODER
from model.interest import InterestModel
from schemas import ItemUpsert
from stream.topics import ensure_topics

TOPICS = {
    "Jazz": ("saxophone quartet", "smoky club session", "bebop trumpet record"),
    "Space": ("rocket launch", "orbiting telescope", "mission to Mars"),
    "Cooking": ("slow-braised stew", "sourdough bread recipe", "knife skills class"),
    "Chess": ("endgame study", "opening repertoire", "grandmaster tournament"),
}


@pytest.fixture(scope="session")
def catalog() -> list[ItemUpsert]:
    """40 readable items over 4 categories."""
    items = []
    for n in range(40):
        category = list(TOPICS)[n % 4]
        phrase = TOPICS[category][n % 3]
        items.append(
            ItemUpsert(
                item_id=f"item-{n}",
                title=f"{category} #{n}",
                description=f"A {phrase}, number {n} of the {category.lower()} collection.",
                categories=[category],
            )
        )
    return items


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory, catalog) -> Path:
    """An interest model over the real offline BERT encoder; weights seeded, not trained."""
    torch.manual_seed(11)
    warm = {item.item_id: i + 1 for i, item in enumerate(catalog[:30])}  # 10 items stay cold
    config = ModelConfig(n_items=len(warm) + 1, text_dim=384, d_model=32, window=8, type_dim=4)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    save_checkpoint(path, InterestModel(config).eval(), warm, list(TOPICS), DEFAULT_ENCODER)
    return path


@pytest.fixture()
def start_worker(tmp_path):
    workers: list[Worker] = []

    def start(settings, name: str = "worker") -> Worker:
        worker = Worker(settings, tmp_path / f"{name}-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.alive():
            worker.stop()


@pytest.fixture()
def engine_settings(settings_factory, catalog, checkpoint_path, tmp_path):
    """Settings of a worker with a model; its topics exist and the catalog is published."""
    settings = settings_factory(checkpoint=checkpoint_path, encoder_cache=tmp_path / "vectors")
    ensure_topics(settings)
    produce(settings.cluster, settings.catalog_topic, keyed(catalog, "item_id"))
    return settings
