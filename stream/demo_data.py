"""A demo world generated from a seed: a small catalog and users whose interests drift.

It lets a newcomer watch interest distributions shift live without downloading a dataset. Item
texts come from per-category vocabulary, so a text encoder places items of one category close
together; every user favours one category, then moves to another (some move twice), so the
interests a worker publishes visibly change over the stream.
"""

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import BehaviorEvent, EventType, ItemUpsert

__all__ = [
    "InterestPhase",
    "demo_catalog",
    "demo_categories",
    "demo_events",
    "describe_drift",
    "interest_phases",
    "write_demo_dataset",
]

ITEMS_PER_CATEGORY = 30
SECOND_CATEGORY_SHARE = 0.2  # items that also belong to a second category
TWICE_DRIFTING_SHARE = 0.3  # users whose favourite changes twice rather than once
CLICK_SHARE = 0.25
# how often an event stays in the user's favourite category; clicks are more concentrated
VIEW_FOCUS = 0.7
CLICK_FOCUS = 0.9
START = datetime(2024, 5, 6, tzinfo=UTC)


@dataclass(frozen=True)
class _Vocabulary:
    name: str
    adjectives: tuple[str, ...]  # title = adjective + noun
    nouns: tuple[str, ...]
    subjects: tuple[str, ...]  # description = subject + detail
    details: tuple[str, ...]
    related: tuple[str, ...]  # plausible second categories, e.g. Hiking for Photography


VOCABULARIES = (
    _Vocabulary(
        "Jazz",
        ("Midnight", "Blue", "Smoky", "Velvet", "Harlem", "Late-Night"),
        ("Trane", "Groove", "Standard", "Bop", "Ballad", "Serenade"),
        (
            "A smoky saxophone quartet session",
            "A bebop trio's fast-fingered set",
            "A brushed-drum piano ballad record",
            "A big-band swing revival concert",
            "A cool-jazz trumpet solo album",
            "A walking-bassline improvisation night",
        ),
        (
            "recorded live in a small Harlem club",
            "captured on vintage tape in New Orleans",
            "from a late set in a Paris jazz cellar",
            "with a guest vocalist scatting the standards",
            "remastered from a 1959 studio date",
            "at a rainy Chicago jazz festival",
        ),
        ("Cooking", "Photography"),
    ),
    _Vocabulary(
        "Hiking",
        ("Alpine", "Summit", "Ridge", "Wild", "Granite", "Misty"),
        ("Trail", "Pass", "Trek", "Ascent", "Loop", "Traverse"),
        (
            "A guide to a steep ridge trail",
            "A three-day backpacking trek",
            "A dawn scramble up a granite peak",
            "A gentle waterfall loop for beginners",
            "A hut-to-hut alpine traverse",
            "A gear checklist for long-distance hikes",
        ),
        (
            "through pine forest and alpine meadows",
            "above the tree line in the Dolomites",
            "with campsites beside glacial lakes",
            "along a windswept coastal cliff path",
            "with elevation profiles and water stops",
            "in the Scottish Highlands in autumn",
        ),
        ("Photography", "Gardening"),
    ),
    _Vocabulary(
        "Cooking",
        ("Rustic", "Golden", "Slow-Cooked", "Spiced", "Crispy", "Homemade"),
        ("Risotto", "Stew", "Flatbread", "Curry", "Tart", "Dumplings"),
        (
            "A one-pot recipe for a weeknight dinner",
            "A step-by-step guide to fresh pasta",
            "A curry simmered with roasted spices",
            "A crusty sourdough bread tutorial",
            "A cast-iron skillet technique",
            "A seasonal vegetable side dish",
        ),
        (
            "with garlic, fresh herbs and olive oil",
            "from a grandmother's handwritten cookbook",
            "ready in thirty minutes from pantry staples",
            "finished with brown butter and lemon",
            "taught by a chef in a busy restaurant kitchen",
            "baked in a wood-fired oven",
        ),
        ("Gardening", "Jazz"),
    ),
    _Vocabulary(
        "Space",
        ("Deep", "Orbital", "Lunar", "Stellar", "Red", "Cosmic"),
        ("Horizon", "Nebula", "Voyager", "Eclipse", "Orbit", "Pulsar"),
        (
            "A documentary about a Mars rover mission",
            "An explainer on black holes and gravitational waves",
            "A telescope tour of distant galaxies",
            "The story of the Apollo moon landings",
            "A briefing on rocket launches and reusable boosters",
            "An astronaut's diary aboard the space station",
        ),
        (
            "told with NASA mission footage",
            "narrated by an astrophysicist",
            "from the launch pad to low Earth orbit",
            "across the solar system and beyond",
            "with images from the James Webb telescope",
            "as the capsule re-enters the atmosphere",
        ),
        ("Photography", "Chess"),
    ),
    _Vocabulary(
        "Football",
        ("Golden", "Last-Minute", "Famous", "Champions", "Stoppage-Time", "Home"),
        ("Goal", "Derby", "Comeback", "Final", "Striker", "Shootout"),
        (
            "Highlights of a dramatic league match",
            "A tactical breakdown of a pressing midfield",
            "A profile of a young striker",
            "The story of a cup final comeback",
            "A penalty shootout replayed kick by kick",
            "An analysis of a goalkeeper's saves",
        ),
        (
            "in a packed stadium under floodlights",
            "with commentary from the touchline",
            "during a title-deciding derby",
            "with every goal from every angle",
            "from the club's youth academy to the first team",
            "in the closing minutes of stoppage time",
        ),
        ("Chess", "Hiking"),
    ),
    _Vocabulary(
        "Gardening",
        ("Cottage", "Secret", "Spring", "Raised-Bed", "Walled", "Wildflower"),
        ("Garden", "Roses", "Harvest", "Border", "Seedlings", "Orchard"),
        (
            "A guide to planting tomatoes and herbs",
            "Tips for pruning roses and fruit trees",
            "A plan for a pollinator-friendly flower border",
            "A how-to on building raised vegetable beds",
            "A composting and soil-care routine",
            "Growing seedlings on a sunny windowsill",
        ),
        (
            "for a small backyard plot",
            "through the seasons from spring to autumn",
            "with organic pest control",
            "in a cottage garden full of perennials",
            "on an urban balcony with containers",
            "with watering and mulching advice",
        ),
        ("Cooking", "Hiking"),
    ),
    _Vocabulary(
        "Photography",
        ("Golden-Hour", "Long-Exposure", "Street", "Monochrome", "Wide-Angle", "Analog"),
        ("Frames", "Light", "Lens", "Shutter", "Portraits", "Shadows"),
        (
            "A lesson on composition and framing",
            "A guide to long-exposure night shots",
            "A street photography walk with a prime lens",
            "Portrait lighting with a single softbox",
            "Editing RAW files for natural colour",
            "Landscape shooting at golden hour",
        ),
        (
            "using a mirrorless camera and a tripod",
            "on black-and-white film",
            "with aperture and shutter speed explained",
            "in the streets of Tokyo at dusk",
            "with tips on focus and depth of field",
            "from capture to print",
        ),
        ("Hiking", "Space"),
    ),
    _Vocabulary(
        "Chess",
        ("Sicilian", "Endgame", "Royal", "Queen's", "Blitz", "Grandmaster"),
        ("Opening", "Sacrifice", "Checkmate", "Defence", "Attack", "Puzzle"),
        (
            "An analysis of a grandmaster game",
            "A lesson on the Sicilian Defence",
            "Endgame technique with rook and pawn",
            "A tactics puzzle set with forks and pins",
            "A blitz tournament recap",
            "The story of a world championship match",
        ),
        (
            "move by move with engine evaluation",
            "for club players rated 1200 to 1800",
            "with classic games from the masters",
            "ending in a queen sacrifice and checkmate",
            "with opening traps to avoid",
            "played on a wooden board in a Moscow club",
        ),
        ("Space", "Football"),
    ),
)

VOCABULARY_BY_NAME = {vocabulary.name: vocabulary for vocabulary in VOCABULARIES}


def demo_catalog(seed: int = 0) -> list[ItemUpsert]:
    """30 items per category (240 in all), ids like `jazz-07`; some in a second category too."""
    rng = random.Random(f"{seed}:catalog")
    catalog = []
    for vocabulary in VOCABULARIES:
        titles = [f"{a} {n}" for a in vocabulary.adjectives for n in vocabulary.nouns]
        texts = [f"{s} {d}." for s in vocabulary.subjects for d in vocabulary.details]
        chosen = zip(
            rng.sample(titles, ITEMS_PER_CATEGORY),
            rng.sample(texts, ITEMS_PER_CATEGORY),
            strict=True,
        )
        for number, (title, description) in enumerate(chosen, 1):
            categories = [vocabulary.name]
            if rng.random() < SECOND_CATEGORY_SHARE:
                other = VOCABULARY_BY_NAME[rng.choice(vocabulary.related)]
                categories.append(other.name)
                subject, detail = rng.choice(other.subjects), rng.choice(other.details)
                description += f" Also features {subject[0].lower()}{subject[1:]} {detail}."
            catalog.append(
                ItemUpsert(
                    item_id=f"{vocabulary.name.lower()}-{number:02d}",
                    title=title,
                    description=description,
                    categories=categories,
                )
            )
    return catalog


def demo_categories(catalog: list[ItemUpsert]) -> list[str]:
    """Every category of the catalog, sorted, so plans drawn from it depend only on the seed."""
    return sorted({category for item in catalog for category in item.categories})


@dataclass(frozen=True)
class InterestPhase:
    """From the user's `first_event` (0-based, in their own sequence) on, `category` is liked."""

    category: str
    first_event: int


def interest_phases(
    user_id: str, categories: list[str], events_per_user: int, seed: int = 0
) -> list[InterestPhase]:
    """The user's favourite categories over time: 2 phases, or 3 for some users.

    Changes fall inside the middle of the sequence, so the first third of a user's events is
    mostly in the first favourite and the last third entirely in the last one, never the same.
    """
    rng = random.Random(f"{seed}:{user_id}:plan")
    twice = rng.random() < TWICE_DRIFTING_SHARE
    windows = [(0.3, 0.45), (0.55, 0.65)] if twice else [(0.35, 0.65)]
    phases = [InterestPhase(rng.choice(categories), 0)]
    for low, high in windows:
        liked = {phase.category for phase in phases}
        favourite = rng.choice([c for c in categories if c not in liked])
        phases.append(InterestPhase(favourite, round(rng.uniform(low, high) * events_per_user)))
    return phases


def describe_drift(
    user_id: str, catalog: list[ItemUpsert], events_per_user: int = 60, seed: int = 0
) -> str:
    """One line for a walkthrough, e.g. 'user-7 moves from Jazz to Space around event 40'."""
    first, *changes = interest_phases(user_id, demo_categories(catalog), events_per_user, seed)
    moves = [f"to {p.category} around event {p.first_event}" for p in changes]
    return f"{user_id} moves from {first.category} " + ", then ".join(moves)


def demo_events(
    catalog: list[ItemUpsert], users: int = 300, events_per_user: int = 60, seed: int = 0
) -> list[BehaviorEvent]:
    """Views and clicks of `users` users (`user-0`, `user-1`, ...), in time order.

    Each user acts in sessions: events minutes apart, sessions hours apart, over about three
    simulated days. Event ids (`user-7:0040`) number each user's events from 0.
    """
    categories = demo_categories(catalog)
    items_in = {c: [item.item_id for item in catalog if c in item.categories] for c in categories}
    events = []
    for number in range(users):
        user_id = f"user-{number}"
        phases = interest_phases(user_id, categories, events_per_user, seed)
        rng = random.Random(f"{seed}:{user_id}:events")
        times = _session_times(rng, events_per_user)
        for index, timestamp in enumerate(times):
            favourite = next(p for p in reversed(phases) if p.first_event <= index).category
            click = rng.random() < CLICK_SHARE
            focused = rng.random() < (CLICK_FOCUS if click else VIEW_FOCUS)
            category = favourite if focused else rng.choice(categories)
            events.append(
                BehaviorEvent(
                    event_id=f"{user_id}:{index:04d}",
                    user_id=user_id,
                    item_id=rng.choice(items_in[category]),
                    event_type=EventType.CLICK if click else EventType.VIEW,
                    timestamp=timestamp,
                    dwell_ms=rng.randint(15_000, 240_000) if click else rng.randint(2_000, 45_000),
                )
            )
    return sorted(events, key=lambda event: (event.timestamp, event.user_id))


def _session_times(rng: random.Random, count: int) -> list[datetime]:
    """Increasing times: sessions of 4-12 events 20 s to 4 min apart, 2-14 h between sessions."""
    now = START + timedelta(seconds=rng.randint(0, 18 * 3600))
    times = []
    left_in_session = rng.randint(4, 12)
    for _ in range(count):
        if left_in_session == 0:
            now += timedelta(seconds=rng.randint(2 * 3600, 14 * 3600))
            left_in_session = rng.randint(4, 12)
        times.append(now)
        now += timedelta(seconds=rng.randint(20, 240))
        left_in_session -= 1
    return times


def write_demo_dataset(
    directory: Path, users: int = 300, events_per_user: int = 60, seed: int = 0
) -> tuple[Path, Path]:
    """Write `events.jsonl` and `catalog.jsonl` (one message per line, as `currents produce
    --events/--catalog` and model.data's JSONL loaders read them); return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog = demo_catalog(seed)
    events = demo_events(catalog, users, events_per_user, seed)
    events_path, catalog_path = directory / "events.jsonl", directory / "catalog.jsonl"
    for path, messages in ((events_path, events), (catalog_path, catalog)):
        path.write_text("".join(message.model_dump_json() + "\n" for message in messages))
    return events_path, catalog_path
