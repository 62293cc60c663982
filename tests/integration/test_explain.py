"""Explanations end to end: `because` on every published recommendation, in the JSON view, and
on the user's live page, rendered by a real browser."""

import argparse
import json
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser

import pytest
from support import behaviour, consume, keyed, produce

from schemas import InterestUpdate
from stream import tail
from stream.page import InterestHistory
from stream.processes import get_json, wait_for


class Dom(HTMLParser):
    """The elements of a page, as (tag, attributes) in document order, and its text."""

    def __init__(self, page: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, tag: str, css_class: str) -> list[dict]:
        return [a for t, a in self.elements if t == tag and css_class in a.get("class", "")]


def published_by_tail(settings, monkeypatch, capsys, count: int) -> list[InterestUpdate]:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    tail.add_arguments(parser)
    argv = ["--from-beginning", "--json", "--limit", str(count), "--timeout", "5"]
    assert tail.run(parser.parse_args(argv)) == 0
    return [
        InterestUpdate.model_validate_json(line) for line in capsys.readouterr().out.splitlines()
    ]


def test_updates_views_and_pages_say_why(
    engine_settings, start_worker, catalog, monkeypatch, capsys, tmp_path
):
    settings = engine_settings
    events = behaviour(catalog, users=6, events=120)
    worker = start_worker(settings)
    worker.wait_ready()
    produce(settings.cluster, settings.events_topic, keyed(events, "user_id"))
    wait_for(
        lambda: sum(
            (get_json(worker.url(f"/users/{u}/interests"))[1] or {}).get("events_applied", 0)
            for u in {e.user_id for e in events}
        ) == len(events),
        120, what="every event applied", process=worker.process,
    )  # fmt: skip

    # every update covers at least one event: at most as many updates as events
    updates = published_by_tail(settings, monkeypatch, capsys, len(events))
    updates = [u for u in updates if u.user_id in {e.user_id for e in events}]
    assert sum(len(u.events) for u in updates) == len(events)
    for update in updates:
        applied = [e for e in events if e.user_id == update.user_id]
        upto = [e.event_id for e in applied].index(update.events[-1].event_id) + 1
        history = {e.event_id: e for e in applied[:upto]}
        assert update.recommendations
        for recommendation in update.recommendations:
            assert 1 <= len(recommendation.because) <= 3
            for reason in recommendation.because:
                event = history[reason.event_id]  # one of this user's events, applied by now
                assert (reason.item_id, reason.event_type) == (event.item_id, event.event_type)

    user = events[-1].user_id
    status, view = get_json(worker.url(f"/users/{user}/interests"))
    assert status == 200 and all(r["because"] for r in view["recommendations"])
    page = urllib.request.urlopen(worker.url(f"/users/{user}"), timeout=10).read().decode()
    own = [u for u in updates if u.user_id == user]
    assert_page(Dom(page), view, min(len(own), InterestHistory().points), catalog)
    assert worker.stop() == 0, worker.tail()


def assert_page(dom: Dom, view: dict, points: int, catalog) -> None:
    categories = {a.get("data-category") for a in dom.having("polyline", "category")}
    assert set(view["interests"]) <= categories
    items = [a["data-item"] for a in dom.having("li", "recommendation")]
    assert items == [r["item_id"] for r in view["recommendations"]]
    assert len(dom.having("div", "because")) == len(items)
    titles = {item.item_id: item.title for item in catalog}
    reasons = " ".join(t for t in dom.text if t.startswith("because you"))
    first = view["recommendations"][0]["because"][0]
    assert titles[first["item_id"]] in reasons
    assert len(dom.having("circle", "update")) == points
    assert any(t == "meta" and a.get("http-equiv") == "refresh" for t, a in dom.elements)
    assert not [a for t, a in dom.elements if t in ("script", "link", "img")]  # self-contained


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium package")
def test_a_browser_renders_a_users_page(engine_settings, start_worker, catalog, tmp_path):
    settings = engine_settings
    events = behaviour(catalog, users=2, events=40)
    worker = start_worker(settings)
    worker.wait_ready()
    produce(settings.cluster, settings.events_topic, keyed(events, "user_id"))
    user = events[-1].user_id
    mine = sum(e.user_id == user for e in events)
    wait_for(
        lambda: (get_json(worker.url(f"/users/{user}/interests"))[1] or {}).get("events_applied")
        == mine,
        120, what="the user's events applied", process=worker.process,
    )  # fmt: skip
    view = get_json(worker.url(f"/users/{user}/interests"))[1]
    published = consume(
        settings.cluster, settings.updates_topic,
        lambda got: sum(len(json.loads(r.value)["events"]) for r in got if r.key == user.encode())
        >= mine,
    )  # fmt: skip
    updates = sum(r.key == user.encode() for r in published)
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = worker.url(f"/users/{user}")
    dom = subprocess.run(
        [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert_page(Dom(dom), view, min(updates, InterestHistory().points), catalog)
    screenshot = tmp_path / "page.png"
    subprocess.run(
        [*browser, f"--screenshot={screenshot}", "--window-size=900,1100", url],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert screenshot.stat().st_size > 1000
    assert worker.stop() == 0, worker.tail()
