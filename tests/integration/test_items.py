"""The item pipeline across two workers: a new item is recommendable everywhere within seconds,
encoded once; a deleted one disappears everywhere."""

import json
import time

from support import behaviour, consume, keyed, metric, produce, served

from schemas import ItemDeletion
from stream.local_kafka import free_port
from stream.processes import get_json, wait_for

BOUND_SECONDS = 30  # generous for a loaded CI box; the measured figure is in the closing note


def on_every_worker(workers, item_id: str, present: bool) -> bool:
    return all(
        (get_json(worker.url(f"/items/{item_id}"))[0] == 200) == present for worker in workers
    )


def test_new_item_reaches_every_worker_encoded_once_and_deletion_removes_it(
    engine_settings, start_worker, catalog, tmp_path
):
    first = engine_settings
    second = first.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / "second"})
    workers = [start_worker(first), start_worker(second)]
    for worker in workers:
        worker.wait_ready()
    events = behaviour(catalog, users=16, events=400)
    produce(
        first.cluster,
        first.events_topic,
        keyed(events, "user_id"),
    )
    consume(
        first.cluster,
        first.updates_topic,
        lambda got: sum(len(json.loads(r.value)["events"]) for r in got) >= len(events),
    )
    users = sorted({e.user_id for e in events})

    # A cold item (never seen in training) is represented by its text alone, so a new item with
    # the same text scores exactly like it: it must appear right beside it in every ranking.
    cold = {item.item_id: item for item in catalog[30:]}
    views = served(workers[0], users)
    user, template = next(
        (user, rec["item_id"])
        for user, view in views.items()
        for rec in view["recommendations"][:5]
        if rec["item_id"] in cold
    )
    new = cold[template].model_copy(update={"item_id": "item-new"})
    sent = time.monotonic()
    produce(first.cluster, first.catalog_topic, [(b"item-new", new.model_dump_json().encode())])
    wait_for(lambda: on_every_worker(workers, "item-new", True), BOUND_SECONDS, 0.1, "new item")
    print(f"new item on every worker after {time.monotonic() - sent:.2f}s")

    ranked = {r["item_id"]: r["score"] for r in served(workers[0], [user])[user]["recommendations"]}
    assert "item-new" in ranked, ranked
    assert abs(ranked["item-new"] - ranked[template]) < 1e-5
    for worker in workers:  # every worker holds it in its own matrix
        assert get_json(worker.url("/health"))[1]["items"] == len(catalog) + 1
    assert sum(metric(w, "currents_items_encoded_total") for w in workers) == len(catalog) + 1

    deletion = ItemDeletion(op="delete", item_id="item-new")
    produce(
        first.cluster, first.catalog_topic, [(b"item-new", deletion.model_dump_json().encode())]
    )
    wait_for(lambda: on_every_worker(workers, "item-new", False), BOUND_SECONDS, 0.1, "deletion")
    for view in served(workers[1], users).values():
        assert "item-new" not in {r["item_id"] for r in view["recommendations"]}
