"""Loaders: turn event logs and catalogs into plain `Event` and `Item` records.

Every loader reads .gz transparently, drops duplicate event ids (first occurrence wins) and
returns events sorted by (user, timestamp, file order).

Rating datasets (MovieLens, Amazon) have no click/view signal, so a rating >= 4 becomes a
"click" (the user liked it) and a lower rating a "view" (consumed, not liked). Both remain
interactions and both can be prediction targets.
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas import InvalidMessage, ItemDeletion, decode_catalog, decode_event

__all__ = [
    "Event",
    "Item",
    "LIKE_RATING",
    "dedupe_and_sort",
    "load_amazon",
    "load_dataset",
    "load_letter",
    "load_jsonl_events",
    "load_jsonl_items",
    "load_mind",
    "load_movielens",
    "open_text",
]

MAX_CATEGORY_CHARS = 64  # the catalog schema's limit on one category name
MAX_CATEGORIES = 32  # ... and on the number of categories of an item

LIKE_RATING = 4.0  # ratings at or above this become clicks


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    event_type: str  # "click" | "view"
    timestamp: float  # Unix seconds
    dwell_ms: int | None = None


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    description: str = ""
    categories: tuple[str, ...] = ()


def open_text(path: str | Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file, gunzipping when it is gzip (by magic bytes, whatever its name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _find(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / f"{name}.gz"):
        if p.exists():
            return p
    return None


def dedupe_and_sort(events: Iterable[Event]) -> list[Event]:
    seen: set[str] = set()
    unique = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            unique.append(e)
    order = sorted(range(len(unique)), key=lambda i: (unique[i].user_id, unique[i].timestamp, i))
    return [unique[i] for i in order]


def _rating_event(eid: str, user: str, item: str, rating: float, ts: float) -> Event:
    kind = "click" if rating >= LIKE_RATING else "view"
    return Event(eid, user, item, kind, ts)


# --- generic JSONL (the wire shapes of the streaming engine) -------------------------------


def _jsonl(path: str | Path) -> Iterator[tuple[int, bytes]]:
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.encode()


def load_jsonl_events(path: str | Path) -> list[Event]:
    """BehaviorEvent JSON lines, validated by the wire schema; a bad row raises ValueError
    naming its line."""
    events = []
    for n, line in _jsonl(path):
        try:
            m = decode_event(line)
        except InvalidMessage as exc:
            raise ValueError(f"{path}:{n}: {exc}") from exc
        events.append(
            Event(
                m.event_id,
                m.user_id,
                m.item_id,
                str(m.event_type),
                m.timestamp.timestamp(),
                m.dwell_ms,
            )
        )
    return dedupe_and_sort(events)


def load_jsonl_items(path: str | Path) -> dict[str, Item]:
    """Catalog JSON lines (ItemUpsert, or ItemDeletion with "op": "delete"), applied in order:
    a later upsert replaces the item, a deletion removes it."""
    items = {}
    for n, line in _jsonl(path):
        try:
            m = decode_catalog(line)
        except InvalidMessage as exc:
            raise ValueError(f"{path}:{n}: {exc}") from exc
        if isinstance(m, ItemDeletion):
            items.pop(m.item_id, None)
        else:
            items[m.item_id] = Item(m.item_id, m.title, m.description, tuple(m.categories))
    return items


# --- MovieLens ------------------------------------------------------------------------------


def load_movielens(folder: str | Path) -> tuple[list[Event], dict[str, Item]]:
    """ml-100k (u.data + u.item) or ml-1m (ratings.dat + movies.dat). Item text = title + genres."""
    folder = Path(folder)
    events, items = [], {}
    if (udata := _find(folder, "u.data")) is not None:
        genres = [g.split("|")[0] for g in _lines(_find(folder, "u.genre"), "latin-1") if g]
        for line in _lines(_find(folder, "u.item"), "latin-1"):
            f = line.split("|")
            if len(f) < 6:
                continue
            cats = tuple(g for g, flag in zip(genres, f[5:], strict=False) if flag == "1")
            items[f[0]] = Item(f[0], f[1], "", cats)
        rows = (line.split("\t") for line in _lines(udata))
    elif (ratings := _find(folder, "ratings.dat")) is not None:
        for line in _lines(_find(folder, "movies.dat"), "latin-1"):
            mid, title, genres = line.split("::")
            items[mid] = Item(mid, title, "", tuple(genres.split("|")))
        rows = (line.split("::") for line in _lines(ratings))
    else:
        raise FileNotFoundError(f"{folder}: no u.data(.gz) or ratings.dat(.gz)")
    for user, item, rating, ts in rows:
        events.append(_rating_event(f"{user}:{item}:{ts}", user, item, float(rating), float(ts)))
    return dedupe_and_sort(events), items


def _lines(path: Path | None, encoding: str = "utf-8") -> Iterator[str]:
    if path is None:
        raise FileNotFoundError("missing companion file of the dataset")
    with open_text(path, encoding) as f:
        for line in f:
            if line := line.rstrip("\r\n"):
                yield line


# --- MIND -----------------------------------------------------------------------------------

HISTORY_SPACING_S = 60.0  # MIND histories carry no times; see load_mind


def load_mind(folder: str | Path) -> tuple[list[Event], dict[str, Item]]:
    """MIND behaviors.tsv + news.tsv.

    Impressions: clicked news -> "click", shown-not-clicked -> "view", at the impression time
    (clicks first, so a click's own impression never leaks into its input). History news ->
    "click" events before the user's first impression; they have no timestamps, so they are
    spaced HISTORY_SPACING_S apart, ending one spacing before that impression. Items referenced
    by behaviors but absent from news.tsv get no Item (their text is missing).
    """
    folder = Path(folder)
    items = {}
    for line in _lines(_find(folder, "news.tsv")):
        f = line.split("\t")
        items[f[0]] = Item(f[0], f[3], f[4], tuple(c for c in f[1:3] if c))
    rows = []
    for line in _lines(_find(folder, "behaviors.tsv")):
        imp_id, user, time, history, impressions = line.split("\t")
        ts = datetime.strptime(time, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=UTC)
        rows.append((ts.timestamp(), imp_id, user, history.split(), impressions.split()))
    first_seen: dict[str, float] = {}
    for ts, _, user, _, _ in rows:
        first_seen[user] = min(ts, first_seen.get(user, ts))
    events = []
    for ts, imp_id, user, history, impressions in rows:
        t0 = first_seen[user] - HISTORY_SPACING_S * len(history)
        for i, news in enumerate(history):  # same ids in every impression of a user: deduped
            events.append(Event(f"{user}:h{i}", user, news, "click", t0 + i * HISTORY_SPACING_S))
        shown = [s.rsplit("-", 1) for s in impressions]
        for news, label in sorted(shown, key=lambda s: s[1] != "1"):
            kind = "click" if label == "1" else "view"
            events.append(Event(f"{imp_id}:{news}", user, news, kind, ts))
    return dedupe_and_sort(events), items


# --- Amazon reviews -------------------------------------------------------------------------


def _json_or_literal(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)  # the 2014 metadata dumps are Python dict literals


def load_amazon(reviews: str | Path, meta: str | Path) -> tuple[list[Event], dict[str, Item]]:
    """Amazon reviews (reviewerID, asin, overall, unixReviewTime) + metadata (asin, title,
    description, categories | category)."""
    items = {}
    for line in _lines(Path(meta)):
        d = _json_or_literal(line)
        desc = d.get("description", "")
        desc = " ".join(desc) if isinstance(desc, list) else str(desc)
        cats = d.get("categories") or d.get("category") or []
        flat = [c for group in cats for c in (group if isinstance(group, list) else [group])]
        items[d["asin"]] = Item(d["asin"], d.get("title", ""), desc, tuple(dict.fromkeys(flat)))
    events = []
    for line in _lines(Path(reviews)):
        d = _json_or_literal(line)
        user, asin, ts = d["reviewerID"], d["asin"], float(d["unixReviewTime"])
        events.append(_rating_event(f"{user}:{asin}:{ts:.0f}", user, asin, d["overall"], ts))
    return dedupe_and_sort(events), items


# --- LETTER / TIGER-style processed Amazon sets ---------------------------------------------

LETTER_START = 1_500_000_000.0  # 2017-07-14: synthetic times start here
LETTER_SPACING_S = 3600.0  # one hour between a user's consecutive interactions


def _category(name: str) -> str:
    name = " ".join(name.split())
    return name if len(name) <= MAX_CATEGORY_CHARS else name[: MAX_CATEGORY_CHARS - 1] + "…"


def _letter_files(paths: list[str]) -> tuple[Path, Path]:
    if len(paths) == 2:
        return Path(paths[0]), Path(paths[1])
    folder = Path(paths[0])
    inter = sorted(folder.glob("*.inter.json*"))
    if len(inter) != 1:
        found = len(inter)
        raise FileNotFoundError(f"{folder}: expected one <name>.inter.json(.gz), found {found}")
    name = inter[0].name.split(".inter.json")[0]
    item = _find(folder, f"{name}.item.json")
    if item is None:
        raise FileNotFoundError(f"{folder}: {name}.inter.json has no {name}.item.json(.gz)")
    return inter[0], item


def load_letter(paths: list[str]) -> tuple[list[Event], dict[str, Item]]:
    """LETTER/TIGER-style files: `<name>.inter.json` ({user: [item, ...]} in each user's order)
    and `<name>.item.json` ({item: {title, description, brand, categories}}), given as a folder
    holding both or as the two paths.

    They carry no times and no ratings: every interaction is a click, at synthetic times that
    keep each user's order (LETTER_SPACING_S apart from LETTER_START). The comma-joined category
    path becomes its levels, each shortened to the schema's limit; the brand leads the
    description. A malformed row raises ValueError naming the user or item.
    """
    inter_path, item_path = _letter_files(paths)
    with open_text(item_path) as f:
        raw_items = json.load(f)
    items = {}
    for iid, d in raw_items.items():
        if not isinstance(d, dict):
            raise ValueError(f"{item_path}: item {iid!r} is not an object")
        text = {k: html.unescape(str(d.get(k) or "")).strip() for k in ("title", "brand")}
        desc = html.unescape(str(d.get("description") or "")).strip()
        if text["brand"]:
            desc = f"Brand: {text['brand']}. {desc}".strip()
        path = [_category(c) for c in str(d.get("categories") or "").split(",") if c.strip()]
        cats = tuple(dict.fromkeys(path))[:MAX_CATEGORIES]
        items[str(iid)] = Item(str(iid), text["title"][:512], desc[:8192], cats)
    with open_text(inter_path) as f:
        histories = json.load(f)
    events = []
    for user, seq in histories.items():
        if not isinstance(seq, list) or not all(isinstance(i, int | str) for i in seq):
            raise ValueError(f"{inter_path}: user {user!r} has no list of item ids")
        for n, item in enumerate(seq):
            ts = LETTER_START + n * LETTER_SPACING_S
            events.append(Event(f"{user}:{n}", str(user), str(item), "click", ts))
    return dedupe_and_sort(events), items


# --- dispatch -------------------------------------------------------------------------------

FORMATS = ("jsonl", "movielens", "mind", "amazon", "letter")


def load_dataset(fmt: str, paths: list[str]) -> tuple[list[Event], dict[str, Item]]:
    """fmt "jsonl": [events, items]; "movielens" | "mind": [folder]; "amazon": [reviews, meta];
    "letter": [folder] or [inter, item]."""
    want = {"jsonl": (2,), "movielens": (1,), "mind": (1,), "amazon": (2,), "letter": (1, 2)}
    if fmt not in want:
        raise ValueError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if len(paths) not in want[fmt]:
        takes = " or ".join(map(str, want[fmt]))
        raise ValueError(f"format {fmt!r} takes {takes} path(s), got {len(paths)}")
    if fmt == "jsonl":
        return load_jsonl_events(paths[0]), load_jsonl_items(paths[1])
    if fmt == "movielens":
        return load_movielens(paths[0])
    if fmt == "mind":
        return load_mind(paths[0])
    if fmt == "letter":
        return load_letter(paths)
    return load_amazon(*paths)
