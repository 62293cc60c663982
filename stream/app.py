"""The Currents Faust app: its topics, tables, agents, timers and web views, top to bottom.

catalog ──encode_catalog──▶ item-vectors ──(every worker follows)──▶ item matrix
events ──update_interests──▶ user-states table (RocksDB + changelog) ──▶ interest updates
                 └──────────▶ dead letters (with the reason)

Each handler is a few lines calling into the worker (stream/worker.py).
"""

import html

import faust

from stream.batching import ready_batches
from stream.faust_compat import AckedTable, BulkDelivery, load_partition_metadata, tune_consumer
from stream.settings import Settings
from stream.topics import state_tables
from stream.worker import Bounds, Worker, load_model

__all__ = ["create_app"]


def create_app(settings: Settings, bounds: Bounds | None = None) -> faust.App:
    """The live worker's app; with `bounds`, a replay: the same app over a range of the events
    topic, putting each event's prequential rank on its update (stream/replay.py)."""
    checkpoint = load_model(settings)
    app = faust.App(
        settings.app_id, Table=AckedTable, **settings.faust_options(replay=bounds is not None)
    )

    raw = {"key_serializer": "raw", "value_serializer": "raw"}  # the worker decodes (or rejects)
    # the events topic reaches the worker in bulk, not record by record (faust_compat.py)
    events = BulkDelivery(app, app.topic(settings.events_topic, **raw), 8 * settings.batch_size)
    catalog = app.topic(settings.catalog_topic, **raw)

    states_name, progress_name = state_tables(checkpoint.version)
    raw_table = {"key_type": bytes, "value_type": bytes}  # the worker encodes keys and values
    # key: the UTF-8 user id, as the events topic's (same partitioning); value: a UserRecord
    user_states = app.Table(states_name, help="Per user: state, recent events.", **raw_table)
    user_states.track_sends()
    # key: an events partition; value: the offset below which every output is in Kafka, written
    # only once Kafka has acknowledged them (stream/progress.py)
    progress = app.Table(progress_name, help="Per partition: where to resume.", **raw_table)
    worker = Worker(
        app, settings, checkpoint, user_states=user_states, progress=progress,
        dead_letters=app.topic(settings.dead_letter_topic, **raw),
        item_vectors=app.topic(settings.item_vectors_topic, **raw), bounds=bounds,
    )  # fmt: skip

    @app.task
    async def follow_items():
        await worker.follow_items()

    if bounds is None:  # only live workers encode the catalog; a replay follows their vectors

        @app.agent(catalog, name="encode_catalog")
        async def encode_catalog(stream):
            async for batch in stream.take_events(64, 1.0):
                await worker.encode_catalog(batch)

    @app.task
    async def update_interests():
        """Micro-batches across users: one batched model step, one record and update per user."""
        batches = ready_batches(events, settings.batch_size, settings.batch_window)
        await worker.process_batches(batches)

    _timers_and_signals(app, worker, events, bounds)
    _pages(app, worker, user_states, settings)
    return app


def _timers_and_signals(
    app: faust.App, worker: Worker, events: BulkDelivery, bounds: Bounds | None
) -> None:
    @app.timer(1.0)
    async def confirm_progress_when_idle():
        worker.confirm_progress()

    @app.timer(1.0)
    async def size_fetches_to_inflow():
        worker.size_fetches()

    @app.timer(1.0)
    async def refetch_lost_tails():
        await worker.refetch_lost_tails()

    @app.timer(5.0)
    async def watch_broker():
        await worker.watch_broker()

    if bounds is not None:

        @app.timer(0.5)
        async def replay_progress():
            bounds.tick()

    @app.on_partitions_assigned.connect
    async def fetch_and_deliver_promptly(sender, assigned, **kwargs) -> None:
        tune_consumer(app)
        events.install()

    @app.on_partitions_revoked.connect
    async def forget_positions(sender, revoked, **kwargs) -> None:
        worker.on_revoke(revoked)
        events.revoke(revoked)

    @app.on_before_shutdown.connect
    async def confirm_before_shutdown(sender, **kwargs) -> None:
        await worker.on_shutdown()


def _pages(app: faust.App, worker: Worker, user_states: faust.Table, settings: Settings) -> None:
    """User and item pages need the bearer token when one is set; /health is open, /metrics
    unless CURRENTS_WEB_METRICS_OPEN=false. User pages are answered by the user's worker."""

    @app.table_route(table=user_states, match_info="user_id")
    async def routed_interests(web, request, user_id: str):
        view = await worker.interests(user_id)
        if view is None:
            return web.json({"error": f"no events for user {user_id!r}"}, status=404)
        return web.json(view)

    @app.page("/users/{user_id}/interests")
    async def user_interests(web, request, user_id: str):
        if (refusal := worker.refusal(web, request)) is not None:
            return refusal
        await load_partition_metadata(app, user_states)
        return await routed_interests(web, request, user_id=user_id)

    @app.table_route(table=user_states, match_info="user_id")
    async def routed_page(web, request, user_id: str):
        page = await worker.page(user_id)
        if page is None:
            return web.html(f"<p>no events for user {html.escape(user_id)}</p>", status=404)
        return web.html(page)

    @app.page("/users/{user_id}")
    async def user_page(web, request, user_id: str):
        if (refusal := worker.refusal(web, request)) is not None:
            return refusal
        await load_partition_metadata(app, user_states)
        return await routed_page(web, request, user_id=user_id)

    @app.page("/items/{item_id}")
    async def item(web, request, item_id: str):
        if (refusal := worker.refusal(web, request)) is not None:
            return refusal
        view = worker.item(item_id)
        if view is None:
            error = f"item {item_id!r} is not in this worker's matrix"
            return web.json({"error": error}, status=404)
        return web.json(view)

    @app.page("/health")
    async def health(web, request):
        return web.json(worker.health())

    @app.page("/metrics")
    async def prometheus(web, request):
        if (refusal := worker.refusal(web, request, not settings.web_metrics_open)) is not None:
            return refusal
        return web.bytes(worker.render_metrics(), content_type="text/plain; version=0.0.4")
