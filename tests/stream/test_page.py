from stream.page import InterestHistory, render_user_page


def test_history_keeps_the_last_points_of_the_most_recently_updated_users():
    history = InterestHistory(users=2, points=3)
    for n in range(5):
        history.record("a", float(n), {"Jazz": n / 10})
    history.record("b", 9.0, {"Space": 1.0})
    assert [at for at, _ in history.of("a")] == [2.0, 3.0, 4.0]
    history.record("a", 10.0, {"Jazz": 0.5})  # a is now the most recently updated
    history.record("c", 11.0, {"Chess": 1.0})
    assert history.of("b") == [] and history.of("a")[-1] == (10.0, {"Jazz": 0.5})


VIEW = {
    "user_id": "<u>",
    "model_version": "v1",
    "events_applied": 2,
    "interests": {"Jazz & Blues": 0.7},
    "interest_shift": {"Jazz & Blues": 0.1},
    "recommendations": [
        {
            "item_id": "i1",
            "score": 1.5,
            "because": [{"event_id": "e1", "item_id": "i2", "event_type": "click"}],
        }
    ],
}


def test_page_escapes_names_and_refreshes_only_while_the_user_is_active():
    history = [(100.0, {"Jazz & Blues": 0.6}), (160.0, {"Jazz & Blues": 0.7})]
    page = render_user_page(VIEW, history, {"i2": "<Blue Train>"}, now=170.0)
    assert "&lt;u&gt;" in page and "Jazz &amp; Blues" in page and "<u>" not in page
    assert "because you clicked &lt;Blue Train&gt;" in page
    assert page.count('class="update"') == 2 and 'http-equiv="refresh"' in page
    assert 'http-equiv="refresh"' not in render_user_page(VIEW, history, {}, now=1000.0)
