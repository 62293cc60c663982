import logging

import faust

import stream.app
from stream.app import create_worker
from stream.settings import Settings


def test_worker_does_not_switch_library_debug_logging_on(monkeypatch):
    # Faust's terminal spinner sets the root logger to DEBUG: every debug line of every library
    # (aiokafka: one per message produced) would be formatted on the hot path.
    monkeypatch.setattr(stream.app, "ensure_changelog_topics", lambda settings, names: None)
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        worker = create_worker(faust.App("logging-test"), Settings(), "warning", quiet=True)
        worker._setup_logging()
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("aiokafka").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
