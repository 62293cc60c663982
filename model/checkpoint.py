"""Checkpoints of the interest model, and what serving needs from them.

A checkpoint is a `torch.save`d dict of tensors and plain values (loadable with
`weights_only=True`): model weights, `asdict(ModelConfig)`, the warm item index, categories,
encoder name and width, training metadata, and a version id derived from config and weights.
States written by one version are refused by every other (see model.state).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from model.config import ModelConfig
from model.interest import InterestModel
from model.state import UserState, decode_states, encode_states

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "model_version", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint this build of the model cannot load."""


def model_version(model: InterestModel) -> str:
    """12 hex chars of SHA-256 over the config and every weight: any retrain gives a new id."""
    h = hashlib.sha256(json.dumps(asdict(model.cfg), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass
class Checkpoint:
    model: InterestModel  # eval mode
    config: ModelConfig
    version: str
    item_index: dict[str, int]  # item id -> warm index (1..W); absent = cold (use 0)
    categories: list[str]
    encoder_name: str
    text_dim: int
    meta: dict = field(default_factory=dict)  # data/split settings, training config, scores

    def warm_indices(self, item_ids: Sequence[str]) -> torch.Tensor:
        """(N,) long warm index per item id; 0 for items not seen in training."""
        return torch.tensor([self.item_index.get(i, 0) for i in item_ids], dtype=torch.long)

    def decode_states(self, blobs: Sequence[bytes | None]) -> UserState:
        """Stored states (None = new user) -> a batch; raises StateVersionError/StateFormatError."""
        return decode_states(blobs, self.version, self.config.d_model, self.config.window)

    def encode_states(self, states: UserState) -> list[bytes]:
        return encode_states(states, self.version)

    @torch.no_grad()
    def unknown_item_vector(self) -> torch.Tensor:
        """(d,) representation of an item with neither text nor id: the stand-in for events on
        items missing from the item matrix."""
        z = torch.zeros(1, self.text_dim)
        return self.model.item_representations(z, torch.zeros(1, dtype=torch.long))[0]


def save_checkpoint(
    path: str | os.PathLike,
    model: InterestModel,
    item_index: dict[str, int],
    categories: Sequence[str],
    encoder_name: str,
    meta: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> str:
    """Write a checkpoint atomically; returns its model version id."""
    version = model_version(model)
    ckpt = dict(
        model=model.state_dict(),
        config=asdict(model.cfg),
        version=version,
        item_index=dict(item_index),
        categories=list(categories),
        encoder_name=encoder_name,
        text_dim=model.cfg.text_dim,
        meta=meta or {},
        optimizer=optimizer.state_dict() if optimizer is not None else None,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return version


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    raw = torch.load(path, map_location=device, weights_only=True)
    cfg = ModelConfig(**raw["config"])
    model = InterestModel(cfg)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as exc:  # weights of another architecture: say so in one line
        raise CheckpointError(
            f"{path} was written by another version of the interest model; train it again "
            f"with `currents train` ({str(exc).splitlines()[0]})"
        ) from None
    model.to(device).eval()
    return Checkpoint(
        model,
        cfg,
        raw["version"],
        raw["item_index"],
        raw["categories"],
        raw["encoder_name"],
        raw["text_dim"],
        raw.get("meta", {}),
    )
