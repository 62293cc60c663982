"""The item matrix every worker scores against, and the records that carry it.

Catalog upserts are BERT-encoded once, by the worker that owns the item's catalog partition, and
published as `ItemVector` records to a compacted topic keyed by item id (a deletion becomes a
tombstone). Every worker follows that topic from the beginning into an `ItemMatrix`: the text
vectors, turned into the model's item representations on the worker's device. A restarted worker
reads the vectors back instead of encoding anything again.
"""

import asyncio
import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from schemas import ItemUpsert
from stream.connection import Cluster

__all__ = ["ItemMatrix", "ItemVector", "text_digest"]

_MAGIC = b"CUIV"
_FORMAT = 1
_HEAD = struct.Struct("<4sHH32sHH")  # magic, format, dim, text sha256, encoder len, meta len


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True)
class ItemVector:
    """An item's text vector plus what scoring needs to know about the item."""

    item_id: str
    vector: np.ndarray  # (text_dim,) float32
    digest: bytes  # sha256 of the encoded text: equal digest = nothing to re-encode
    encoder: str
    title: str
    categories: tuple[str, ...]

    def to_bytes(self) -> bytes:
        encoder = self.encoder.encode()
        meta = json.dumps({"title": self.title, "categories": list(self.categories)}).encode()
        vector = np.asarray(self.vector, dtype="<f4")
        head = _HEAD.pack(_MAGIC, _FORMAT, vector.size, self.digest, len(encoder), len(meta))
        return head + encoder + meta + vector.tobytes()

    @classmethod
    def from_bytes(cls, item_id: str, raw: bytes) -> "ItemVector":
        magic, fmt, dim, digest, n_encoder, n_meta = _HEAD.unpack_from(raw)
        if magic != _MAGIC or fmt != _FORMAT:
            raise ValueError(f"item {item_id!r}: not an item-vector record of format {_FORMAT}")
        at = _HEAD.size
        encoder = raw[at : at + n_encoder].decode()
        meta = json.loads(raw[at + n_encoder : at + n_encoder + n_meta])
        vector = np.frombuffer(raw, dtype="<f4", count=dim, offset=at + n_encoder + n_meta)
        return cls(item_id, vector, digest, encoder, meta["title"], tuple(meta["categories"]))

    @classmethod
    def for_upsert(cls, upsert: ItemUpsert, text: str, vector: np.ndarray, encoder: str):
        categories = tuple(upsert.categories)
        return cls(upsert.item_id, vector, text_digest(text), encoder, upsert.title, categories)


class ItemMatrix:
    """All live items of the catalog as rows of one tensor on the worker's device.

    Rows of deleted items are recycled; `alive` masks them out of rankings. Representations are
    computed per changed row with the model's `item_representations`, so an upsert costs one
    small projection, not a rebuild.
    """

    def __init__(self, represent, item_index: dict[str, int], encoder: str, device: str = "cpu"):
        self._represent = represent  # (n, text_dim) float32, (n,) warm index -> (n, d)
        self._warm = item_index
        self.encoder = encoder
        self.device = device
        self.rows: dict[str, int] = {}
        self.items: list[ItemVector | None] = []
        self._free: list[int] = []  # rows of deleted items, reused first
        self.reps = torch.zeros(0, 0, device=device)  # (capacity, d)
        self.alive = torch.zeros(0, dtype=torch.bool, device=device)
        self.categories: dict[str, int] = {}
        self._membership: torch.Tensor | None = None
        self.lock = asyncio.Lock()  # held while the matrix changes or a batch ranks against it

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.rows

    def digest_of(self, item_id: str) -> bytes | None:
        row = self.rows.get(item_id)
        return None if row is None else self.items[row].digest

    def upsert(self, vectors: list[ItemVector]) -> None:
        """Insert or replace items; vectors from another encoder are refused."""
        vectors = list({v.item_id: v for v in vectors}.values())  # the last upsert wins
        if not vectors:
            return
        foreign = {v.encoder for v in vectors} - {self.encoder}
        if foreign:
            raise ValueError(
                f"item vectors from encoder {sorted(foreign)} do not fit a model trained on "
                f"{self.encoder!r}"
            )
        rows = [self._row_for(v.item_id) for v in vectors]
        text = torch.from_numpy(np.stack([v.vector for v in vectors])).to(self.device)
        warm = torch.tensor([self._warm.get(v.item_id, 0) for v in vectors], device=self.device)
        with torch.inference_mode():
            reps = self._represent(text, warm)  # (n, d)
        self._grow(max(rows) + 1, reps.shape[1])
        index = torch.tensor(rows, device=self.device)
        self.reps[index] = reps
        self.alive[index] = True
        for row, vector in zip(rows, vectors, strict=True):
            self.items[row] = vector
            for category in vector.categories:
                self.categories.setdefault(category, len(self.categories))
        self._membership = None

    def delete(self, item_id: str) -> None:
        row = self.rows.pop(item_id, None)
        if row is not None:
            self.items[row] = None
            self.alive[row] = False
            self._free.append(row)
            self._membership = None

    def item_id(self, row: int) -> str:
        return self.items[row].item_id

    def membership(self) -> torch.Tensor:
        """(rows of `reps`, categories) 0/1 float: which categories each row belongs to."""
        if self._membership is None:
            member = torch.zeros(self.reps.shape[0], max(1, len(self.categories)))
            for row, item in enumerate(self.items):
                for category in item.categories if item else ():
                    member[row, self.categories[category]] = 1.0
            self._membership = member.to(self.device)
        return self._membership

    def category_names(self) -> list[str]:
        return sorted(self.categories, key=self.categories.get)

    def _row_for(self, item_id: str) -> int:
        row = self.rows.get(item_id)
        if row is None:
            if self._free:
                row = self._free.pop()
            else:
                row = len(self.items)
                self.items.append(None)
            self.rows[item_id] = row
        return row

    def _grow(self, size: int, width: int) -> None:
        if self.reps.shape[0] >= size and self.reps.shape[1] == width:
            return
        capacity = max(size, 2 * self.reps.shape[0], 64)
        reps = torch.zeros(capacity, width, device=self.device)
        reps[: self.reps.shape[0]] = self.reps if self.reps.numel() else 0
        alive = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        alive[: self.alive.shape[0]] = self.alive
        self.reps, self.alive = reps, alive


def encode_upserts(encoder, upserts: list[ItemUpsert]) -> list[ItemVector]:
    """BERT-encode catalog upserts in one batch (`encoder` is a model.encoder.ItemEncoder)."""
    from model.encoder import item_text

    texts = [item_text(u.item_id, u.title, u.description, u.categories) for u in upserts]
    vectors = encoder.encode(texts)
    return [
        ItemVector.for_upsert(upsert, text, vector, encoder.name)
        for upsert, text, vector in zip(upserts, texts, vectors, strict=True)
    ]


async def follow_item_vectors(
    cluster: Cluster, topic: str, matrix: ItemMatrix, loaded, catalog_encoded, ready,
    outage_budget: float = 300.0,
) -> None:  # fmt: skip
    """Keep `matrix` equal to the item-vectors topic, forever.

    Sets `loaded` once the vectors present at start are in the matrix (the catalog agent then
    knows what is already encoded), and `ready` once, in addition, the catalog backlog present
    at start is encoded (`await catalog_encoded()` is true) and its vectors are in the matrix:
    only then can events be scored without rejecting items that are merely not encoded yet.

    A plain consumer outside the consumer group, on every partition: every worker needs every
    item, and Faust's GlobalTable loops in recovery with several workers (faust #283). Its calls
    wait out a broker outage for up to `outage_budget` seconds (stream/outages.py).
    """
    from stream.outages import apatiently

    consumer = cluster.aio_consumer(
        topic,
        group_id=None,  # no group: all partitions, read from the beginning, nothing committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await apatiently(consumer.start, "the item-vector follower", outage_budget)
    try:
        target = None  # end offsets to reach before the next readiness step
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            async with matrix.lock:
                for records in batches.values():
                    apply_vector_records(matrix, records)
            if ready.is_set() or not consumer.assignment():
                continue
            if target is None and (not loaded.is_set() or await catalog_encoded()):
                target = await apatiently(
                    lambda: consumer.end_offsets(list(consumer.assignment())),
                    "the item-vector follower", outage_budget,
                )  # fmt: skip
            if target is not None and await _caught_up(consumer, target):
                (ready if loaded.is_set() else loaded).set()
                target = None
    finally:
        await consumer.stop()


def catalog_backlog_encoded(cluster: Cluster, group: str, topic: str):
    """A check that the consumer group has committed the catalog topic up to its end offsets
    as of the first call, i.e. that every catalog message present at start is encoded."""
    from kafka import TopicPartition

    consumer = cluster.consumer(group_id=None)
    partitions = consumer.partitions_for_topic(topic) or set()
    end = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    consumer.close()
    admin = cluster.admin()

    def encoded() -> bool:
        committed = admin.list_group_offsets({group: list(end)}).get(group, {})
        return all(
            offset == 0 or (tp in committed and committed[tp].offset >= offset)
            for tp, offset in end.items()
        )

    return encoded


async def _caught_up(consumer, end: dict) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


def apply_vector_records(matrix: ItemMatrix, records) -> None:
    """Apply item-vector records (key item id, value ItemVector bytes or None) in order."""
    upserts: list[ItemVector] = []
    for record in records:
        item_id = record.key.decode()
        if record.value is None:
            matrix.upsert(upserts)
            upserts = []
            matrix.delete(item_id)
        else:
            upserts.append(ItemVector.from_bytes(item_id, record.value))
    matrix.upsert(upserts)
