"""A user's live page: current interests and shift, recommendations with their reasons, and a
chart of how the user's category interests evolved over the recent updates.

Self-contained HTML (inline CSS and SVG, no script, no external asset), so it works on a
worker with no internet access. The worker keeps each user's recent interests in an
`InterestHistory`, bounded in users and points, so the page never reads the updates topic.
"""

import html
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping

__all__ = ["InterestHistory", "render_user_page"]

ACTIVE_SECONDS = 60.0  # the page refreshes itself while the user's last update is this recent
REFRESH_SECONDS = 2
WIDTH, HEIGHT, PAD = 640, 220, 30
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


class InterestHistory:
    """Per user, the interests of the last `points` updates; the `users` most recently updated
    users are kept (least recently updated dropped first), so memory is bounded. A worker that
    takes over a partition starts its users' histories afresh."""

    def __init__(self, users: int = 4096, points: int = 32):
        self.users, self.points = users, points
        self._by_user: OrderedDict[str, deque] = OrderedDict()

    def record(self, user_id: str, at: float, interests: Mapping[str, float]) -> None:
        """One update of the user at `at` (seconds): its top categories and their shares."""
        points = self._by_user.pop(user_id, None) or deque(maxlen=self.points)
        points.append((at, tuple(interests.items())))
        self._by_user[user_id] = points
        if len(self._by_user) > self.users:
            self._by_user.popitem(last=False)

    def of(self, user_id: str) -> list[tuple[float, dict[str, float]]]:
        """The user's recent updates, oldest first: (time, category -> share)."""
        return [(at, dict(shares)) for at, shares in self._by_user.get(user_id, ())]

    def forget_all(self) -> None:
        self._by_user.clear()


def render_user_page(
    view: Mapping,
    history: list[tuple[float, dict[str, float]]],
    titles: Mapping[str, str],
    now: float | None = None,
) -> str:
    """The page of one user: `view` is the worker's JSON view of the user (interests, shift,
    recommendations with `because`), `history` the user's recent updates, oldest first."""
    now = time.time() if now is None else now
    active = bool(history) and now - history[-1][0] <= ACTIVE_SECONDS
    user = html.escape(view["user_id"])
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if active else ""
    status = "active: this page refreshes itself" if active else "inactive: not refreshing"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{user} · Currents</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: left; }}
.bar {{ background: #4a7; height: 10px; display: inline-block; }}
.up {{ color: #282; }} .down {{ color: #b33; }} .because {{ color: #666; font-size: 90%; }}
li {{ margin-bottom: 6px; }}
</style></head>
<body>
<h1>{user}</h1>
<p id="status">{view["events_applied"]} events applied, model {html.escape(view["model_version"])};
{status}</p>
<h2>Interests</h2>
{_interests(view["interests"], view["interest_shift"])}
<h2>How they evolved</h2>
{_chart(history)}
<h2>Recommended</h2>
{_recommendations(view["recommendations"], titles)}
</body></html>
"""


def _interests(interests: Mapping[str, float], shift: Mapping[str, float]) -> str:
    rows = []
    for name, share in sorted(interests.items(), key=lambda pair: -pair[1]):
        moved = shift.get(name, 0.0)
        rows.append(
            f'<tr class="interest"><td class="category">{html.escape(name)}</td>'
            f'<td><span class="bar" style="width:{round(share * 200)}px"></span></td>'
            f'<td class="share">{share:.2f}</td>'
            f'<td class="{"up" if moved >= 0 else "down"}">{moved:+.2f}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="4">none yet</td></tr>'
    return f'<table id="interests"><tr><th>category</th><th></th><th>share</th><th>shift</th>'\
        f"</tr>{body}</table>"  # fmt: skip


def _recommendations(recommendations: Iterable[Mapping], titles: Mapping[str, str]) -> str:
    items = []
    for recommendation in recommendations:
        item_id = recommendation["item_id"]
        name = html.escape(titles.get(item_id, item_id))
        said = [
            f"{_PAST.get(reason.get('event_type'), 'saw')} "
            + html.escape(titles.get(reason["item_id"], reason["item_id"]))
            for reason in recommendation.get("because") or ()
        ]
        because = f'<div class="because">because you {", ".join(said)}</div>' if said else ""
        items.append(
            f'<li class="recommendation" data-item="{html.escape(item_id)}">'
            f"<b>{name}</b> <small>{html.escape(item_id)} · {recommendation['score']:.3f}</small>"
            f"{because}</li>"
        )
    return f'<ol id="recommendations">{"".join(items)}</ol>' if items else "<p>nothing yet</p>"


_PAST = {"click": "clicked", "view": "viewed"}


def _chart(history: list[tuple[float, dict[str, float]]]) -> str:
    """Inline SVG: a line per category over the updates (a category outside an update's top
    categories drawn at 0), and one marker per update on its leading category's line."""
    if not history:
        return '<svg id="evolution" width="0" height="0"></svg><p>no updates seen yet</p>'
    categories = list(dict.fromkeys(name for _, shares in history for name in shares))
    step = (WIDTH - 2 * PAD) / max(1, len(history) - 1)

    def xy(index: int, share: float) -> str:
        return f"{PAD + index * step:.1f},{HEIGHT - PAD - share * (HEIGHT - 2 * PAD):.1f}"

    parts = [
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#999"/>',
        f'<text x="2" y="{PAD}" font-size="10">1.0</text>'
        f'<text x="2" y="{HEIGHT - PAD}" font-size="10">0.0</text>',
    ]
    for n, name in enumerate(categories):
        colour = PALETTE[n % len(PALETTE)]
        points = " ".join(xy(i, shares.get(name, 0.0)) for i, (_, shares) in enumerate(history))
        parts.append(
            f'<polyline class="category" data-category="{html.escape(name)}" fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{points}"/>'
            f'<text x="{WIDTH - PAD + 4}" y="{14 + 14 * n}" font-size="11" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    for i, (at, shares) in enumerate(history):
        lead, share = max(shares.items(), key=lambda pair: pair[1], default=("", 0.0))
        x, y = xy(i, share).split(",")
        when = time.strftime("%H:%M:%S", time.gmtime(at))
        parts.append(
            f'<circle class="update" cx="{x}" cy="{y}" r="3" fill="#333">'
            f"<title>{when}Z: {html.escape(lead)} {share:.2f}</title></circle>"
        )
    return (
        f'<svg id="evolution" xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 120}" '
        f'height="{HEIGHT}" role="img" aria-label="category interests over the last '
        f'{len(history)} updates">{"".join(parts)}</svg>'
    )
