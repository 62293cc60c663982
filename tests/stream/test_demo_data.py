from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from model.data import load_jsonl_events, load_jsonl_items
from schemas import EventType, decode_catalog, decode_event
from stream.demo_data import (
    demo_catalog,
    demo_categories,
    demo_events,
    describe_drift,
    interest_phases,
    write_demo_dataset,
)

USERS, EVENTS_PER_USER = 40, 60


@pytest.fixture(scope="module")
def catalog():
    return demo_catalog(seed=3)


@pytest.fixture(scope="module")
def events(catalog):
    return demo_events(catalog, users=USERS, events_per_user=EVENTS_PER_USER, seed=3)


def by_user(events) -> dict[str, list]:
    sequences = defaultdict(list)
    for event in events:
        sequences[event.user_id].append(event)
    return sequences


def test_same_seed_same_world_other_seed_other_world(catalog, events):
    assert demo_catalog(seed=3) == catalog
    assert demo_events(catalog, USERS, EVENTS_PER_USER, seed=3) == events
    assert demo_catalog(seed=4) != catalog
    assert demo_events(catalog, USERS, EVENTS_PER_USER, seed=4) != events


def test_catalog_has_distinct_texts_over_eight_categories(catalog):
    assert len(catalog) == 240
    assert len(demo_categories(catalog)) == 8
    assert len({item.item_id for item in catalog}) == len(catalog)
    assert len({item.title for item in catalog}) == len(catalog)
    assert len({item.description for item in catalog}) == len(catalog)
    sizes = Counter(len(item.categories) for item in catalog)
    assert set(sizes) == {1, 2} and 20 <= sizes[2] <= 80


def test_every_message_survives_the_wire_decoders(catalog, events):
    for item in catalog:
        assert decode_catalog(item.model_dump_json().encode()) == item
    for event in events:
        assert decode_event(event.model_dump_json().encode()) == event
    known = {item.item_id for item in catalog}
    assert all(event.item_id in known for event in events)


def test_events_are_time_ordered_with_unique_ids_and_sessions(events):
    assert len(events) == USERS * EVENTS_PER_USER
    assert len({event.event_id for event in events}) == len(events)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    for sequence in by_user(events).values():
        gaps = [(b.timestamp - a.timestamp).total_seconds() for a, b in pairwise(sequence)]
        assert min(gaps) >= 20
        assert any(gap >= 2 * 3600 for gap in gaps)  # more than one session
        assert (sequence[-1].timestamp - sequence[0].timestamp).days >= 1
    clicks = sum(event.event_type is EventType.CLICK for event in events)
    assert 0.15 < clicks / len(events) < 0.35


def test_interests_drift_from_first_to_last_favourite(catalog, events):
    categories_of = {item.item_id: item.categories for item in catalog}
    third = EVENTS_PER_USER // 3
    early_share, late_share = [], []
    for user, sequence in by_user(events).items():
        phases = interest_phases(user, demo_categories(catalog), EVENTS_PER_USER, seed=3)
        first, last = phases[0].category, phases[-1].category
        assert first != last
        early = [categories_of[event.item_id] for event in sequence[:third]]
        late = [categories_of[event.item_id] for event in sequence[-third:]]
        early_share.append(sum(first in cats for cats in early) / third)
        late_share.append(sum(first in cats for cats in late) / third)
        assert sum(last in cats for cats in late) / third > 0.4
    assert sum(early_share) / USERS > 0.6
    assert sum(late_share) / USERS < 0.1


def test_clicks_stay_closer_to_the_favourite_than_views(catalog, events):
    categories_of = {item.item_id: item.categories for item in catalog}
    on_favourite = defaultdict(list)
    for user, sequence in by_user(events).items():
        phases = interest_phases(user, demo_categories(catalog), EVENTS_PER_USER, seed=3)
        for index, event in enumerate(sequence):
            favourite = [p for p in phases if p.first_event <= index][-1].category
            on_favourite[event.event_type].append(favourite in categories_of[event.item_id])
    share = {kind: sum(hits) / len(hits) for kind, hits in on_favourite.items()}
    assert share[EventType.CLICK] > share[EventType.VIEW] + 0.1


def test_some_users_drift_twice_and_drift_is_described(catalog):
    categories = demo_categories(catalog)
    plans = {f"user-{n}": interest_phases(f"user-{n}", categories, 60) for n in range(USERS)}
    assert {len(phases) for phases in plans.values()} == {2, 3}
    user, phases = next((u, p) for u, p in plans.items() if len(p) == 3)
    first, middle, last = phases
    assert describe_drift(user, catalog) == (
        f"{user} moves from {first.category} to {middle.category} around event "
        f"{middle.first_event}, then to {last.category} around event {last.first_event}"
    )
    assert 0 < middle.first_event < last.first_event < 40


def test_written_dataset_is_read_by_the_model_loaders(tmp_path):
    events_path, catalog_path = write_demo_dataset(tmp_path / "demo", users=5, events_per_user=12)
    assert (events_path.name, catalog_path.name) == ("events.jsonl", "catalog.jsonl")
    loaded = load_jsonl_events(events_path)
    assert len(loaded) == 5 * 12 and {e.user_id for e in loaded} == {f"user-{n}" for n in range(5)}
    items = load_jsonl_items(catalog_path)
    assert set(items) == {item.item_id for item in demo_catalog()}
    assert items["jazz-01"].title == demo_catalog()[0].title
