"""Loaders: every supported format, .gz transparency, dedupe, ordering and bad rows."""

import gzip
import json

import pytest

from model.data import (
    load_amazon,
    load_dataset,
    load_jsonl_events,
    load_jsonl_items,
    load_mind,
    load_movielens,
)


def gz(path, text, encoding="utf-8"):
    with gzip.open(path, "wb") as f:
        f.write(text.encode(encoding))
    return path


def event(eid, user="u1", item="i1", kind="click", ts="2024-01-01T00:00:00Z"):
    return json.dumps(
        dict(
            event_id=eid,
            user_id=user,
            item_id=item,
            event_type=kind,
            timestamp=ts,
            dwell_ms=None,
            context=None,
        )
    )


def test_jsonl_events_dedupe_sort_and_read_gzip(tmp_path):
    rows = [
        event("e2", ts="2024-01-01T00:00:05Z", item="i2"),
        event("e1"),
        event("e2", ts="2024-01-01T00:00:05Z", item="i2"),  # a retried send
        event("e3", user="u0", kind="view"),
    ]
    path = gz(tmp_path / "events.jsonl.gz", "\n".join(rows) + "\n\n")
    events = load_jsonl_events(path)
    assert [e.event_id for e in events] == ["e3", "e1", "e2"]  # by user, then time
    assert events[0].event_type == "view" and isinstance(events[0].event_type, str)
    assert events[2].timestamp - events[1].timestamp == 5.0


@pytest.mark.parametrize(
    "row, message",
    [
        (event("e1", kind="like"), "event_type"),
        ('{"event_id": "e1"', "JSON"),
        (event("e1").replace('"user_id": "u1", ', ""), "user_id"),
    ],
)
def test_bad_event_rows_raise_with_their_line(tmp_path, row, message):
    path = tmp_path / "events.jsonl"
    path.write_text(event("e0") + "\n" + row + "\n")
    with pytest.raises(ValueError, match=rf"events.jsonl:2: .*{message}"):
        load_jsonl_events(path)


def test_jsonl_items_apply_upserts_and_deletions_in_order(tmp_path):
    rows = [
        dict(item_id="a", title="Old", categories=["x"]),
        dict(item_id="b", title="", description="", categories=[]),
        dict(item_id="a", title="New", description="d", categories=["y"]),
        dict(op="delete", item_id="c"),
        dict(item_id="c", title="C"),
        dict(op="delete", item_id="c"),
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_jsonl_items(path)
    assert sorted(items) == ["a", "b"]
    assert items["a"].title == "New" and items["a"].categories == ("y",)
    assert items["b"].title == ""  # empty text is allowed; the encoder falls back to the id


def test_movielens_100k_layout(tmp_path):
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_bytes(
        "1|Amélie (2001)|x||url|0|0|1\n2|Heat (1995)|x||url|0|1|1\n".encode("latin-1")
    )
    gz(tmp_path / "u.data.gz", "7\t1\t5\t100\n7\t2\t2\t50\n8\t2\t4\t70\n")
    events, items = load_movielens(tmp_path)
    assert items["1"].title == "Amélie (2001)" and items["2"].categories == ("Action", "Comedy")
    assert [(e.user_id, e.item_id, e.event_type) for e in events] == [
        ("7", "2", "view"),
        ("7", "1", "click"),
        ("8", "2", "click"),
    ]  # rating >= 4 is a click


def test_movielens_1m_layout(tmp_path):
    (tmp_path / "movies.dat").write_text(
        "1::Toy Story (1995)::Animation|Comedy\n", encoding="latin-1"
    )
    (tmp_path / "ratings.dat").write_text("1::1::3::978300760\n1::1::3::978300760\n")
    events, items = load_dataset("movielens", [str(tmp_path)])
    assert items["1"].categories == ("Animation", "Comedy")
    assert len(events) == 1 and events[0].event_type == "view"  # duplicate row dropped


def test_mind_impressions_and_history(tmp_path):
    news = "N1\tsports\tgolf\tTiger wins\tAbstract\turl\t[]\t[]\n"
    behaviors = (
        "1\tU1\t11/12/2019 2:14:46 PM\tN5 N6\tN1-0 N2-1 N3-0\n"
        "2\tU1\t11/13/2019 9:00:00 AM\tN5 N6\tN2-0\n"
    )
    gz(tmp_path / "news.tsv.gz", news)
    (tmp_path / "behaviors.tsv").write_text(behaviors)
    events, items = load_mind(tmp_path)
    assert set(items) == {"N1"} and items["N1"].categories == ("sports", "golf")
    seq = [(e.item_id, e.event_type) for e in events]
    # history once (deduped across impressions), then each impression: clicks before views
    assert seq == [
        ("N5", "click"),
        ("N6", "click"),
        ("N2", "click"),
        ("N1", "view"),
        ("N3", "view"),
        ("N2", "view"),
    ]
    assert events[1].timestamp < events[2].timestamp == events[3].timestamp < events[5].timestamp


def test_amazon_reviews_and_python_literal_metadata(tmp_path):
    meta = (
        "{'asin': 'A1', 'title': 'Kettle', 'categories': [['Home', 'Kitchen']]}\n"
        '{"asin": "A2", "title": "Mug", "description": ["Big", "mug"], "category": ["Home"]}\n'
    )
    reviews = (
        '{"reviewerID": "R1", "asin": "A1", "overall": 5.0, "unixReviewTime": 10}\n'
        '{"reviewerID": "R1", "asin": "A2", "overall": 2.0, "unixReviewTime": 5}\n'
    )
    gz(tmp_path / "meta.json.gz", meta)
    (tmp_path / "reviews.json").write_text(reviews)
    events, items = load_amazon(tmp_path / "reviews.json", tmp_path / "meta.json.gz")
    assert items["A1"].categories == ("Home", "Kitchen") and items["A2"].description == "Big mug"
    assert [(e.item_id, e.event_type) for e in events] == [("A2", "view"), ("A1", "click")]


def test_load_dataset_rejects_unknown_formats_and_wrong_path_counts():
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset("csv", ["x"])
    with pytest.raises(ValueError, match="takes 2 path"):
        load_dataset("jsonl", ["events.jsonl"])


def letter_files(folder, inter, items, name="Office"):
    folder.mkdir(exist_ok=True)
    gz(folder / f"{name}.inter.json.gz", json.dumps(inter))
    (folder / f"{name}.item.json").write_text(json.dumps(items))
    return folder


LETTER_ITEMS = {
    "0": {"title": "Pen &amp; Cap", "description": "", "brand": "Acme", "categories": "Office"},
    "1": {
        "title": "Stapler",
        "description": "Heavy duty.",
        "brand": "",
        "categories": "Office, " + "Staplers and Punches " * 5 + ", Desktop Staplers",
    },
    "2": {"title": "Ink", "description": "Black", "brand": "Inko", "categories": ""},
}


def test_letter_files_keep_each_users_order_as_clicks_at_increasing_times(tmp_path):
    folder = letter_files(tmp_path / "office", {"7": [2, 0, 1], "3": [1, 2]}, LETTER_ITEMS)
    events, items = load_dataset("letter", [str(folder)])
    by_user = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    assert [e.item_id for e in by_user["7"]] == ["2", "0", "1"]  # the file's order, kept
    assert [e.item_id for e in by_user["3"]] == ["1", "2"]
    for seq in by_user.values():
        assert all(e.event_type == "click" for e in seq)
        assert all(a.timestamp < b.timestamp for a, b in zip(seq, seq[1:], strict=False))
        assert len({e.event_id for e in seq}) == len(seq)
    # the same two paths given explicitly read the same
    explicit = load_dataset(
        "letter", [str(folder / "Office.inter.json.gz"), str(folder / "Office.item.json")]
    )
    assert explicit == (events, items)


def test_letter_items_become_valid_catalog_messages(tmp_path):
    from stream.produce import to_item_upsert

    folder = letter_files(tmp_path / "office", {"0": [0, 1, 2]}, LETTER_ITEMS)
    _, items = load_dataset("letter", [str(folder)])
    assert items["0"].title == "Pen & Cap"  # HTML entities decoded
    assert items["0"].description == "Brand: Acme." and items["2"].categories == ()
    long = items["1"].categories
    assert long[0] == "Office" and long[-1] == "Desktop Staplers"
    assert all(len(c) <= 64 for c in long) and long[1].endswith("…")  # shortened, not fatal
    for item in items.values():
        to_item_upsert(item)  # raises if the schema would reject it


@pytest.mark.parametrize(
    "inter, items, message",
    [
        ({"0": 5}, LETTER_ITEMS, "user '0' has no list"),
        ({"0": [0, [1]]}, LETTER_ITEMS, "user '0' has no list"),
        ({"0": [0]}, {"0": "not an object"}, "item '0' is not an object"),
    ],
)
def test_bad_letter_rows_raise_naming_the_user_or_item(tmp_path, inter, items, message):
    folder = letter_files(tmp_path / "office", inter, items)
    with pytest.raises(ValueError, match=message):
        load_dataset("letter", [str(folder)])


def test_a_letter_folder_needs_its_two_files(tmp_path):
    (tmp_path / "Office.inter.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="Office.item.json"):
        load_dataset("letter", [str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="inter.json"):
        load_dataset("letter", [str(tmp_path / "missing")])
