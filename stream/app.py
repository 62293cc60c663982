"""The Currents Faust app: its topics, tables, agents and web views in one place."""

import faust

from schemas import InvalidMessage
from stream.records import dead_letter, decode_keyed_event, record_activity
from stream.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 10),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        # Faust's own /table and /router pages expose raw table contents: off.
        web_tables_enabled=False,
        web_router_enabled=False,
    )

    # Raw bytes in and out: decoding happens inside the agent, where a bad record can be
    # dead-lettered instead of crashing the stream.
    events = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(
        settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
    )

    activity = app.Table(
        "user-activity",
        key_type=bytes,  # the UTF-8 user id, as in the events topic key: same partitioning
        options={"driver": "rocksdict"},
        help="Per user: event count and the last event applied.",
    )

    @app.agent(events)
    async def track_activity(stream):
        async for event in stream.events():
            message = event.message
            try:
                behavior = decode_keyed_event(event.key, event.value)
            except InvalidMessage as error:
                # Faust acks a record even when the body raises: reject it here, explicitly.
                await dead_letters.send(
                    key=event.key,
                    value=dead_letter(
                        error, event.key, event.value, message.topic, message.partition,
                        message.offset,
                    ),
                )  # fmt: skip
                continue
            user = behavior.user_id.encode()
            activity[user] = record_activity(
                activity.get(user), behavior, message.partition, message.offset
            )

    @app.table_route(table=activity, match_info="user_id")
    async def routed_activity(web, request, user_id: str):
        summary = activity.get(user_id.encode())
        if summary is None:
            return web.json({"error": f"no events for user {user_id!r}"}, status=404)
        return web.json({"user_id": user_id, **summary})

    @app.page("/users/{user_id}/activity")
    async def user_activity(web, request, user_id: str):
        await _load_partition_metadata(app, activity)
        return await routed_activity(web, request, user_id=user_id)

    @app.page("/health")
    async def health(web, request):
        return web.json({"status": "ok", "app": settings.app_id})

    return app


async def _load_partition_metadata(app: faust.App, table) -> None:
    """Make sure the producer knows the partitions of `table`'s changelog.

    Faust's request router hashes the key with the producer's metadata, which only holds
    topics the producer has written to: a freshly restored worker would fail every routed
    request. Asking for the partitions is a no-op once they are known.
    """
    await app.producer._ensure_producer().partitions_for(table.changelog_topic.get_topic_name())
