"""`currents`: run the local broker, the worker, the demo, and the model tools.

currents demo                  local broker + worker + sample stream; Ctrl-C stops all
currents kafka start|stop|status|fetch
currents worker                a Faust worker (settings from CURRENTS_* variables)
currents topics                create the Currents topics on the cluster
currents forget USER_ID...     erase users' states (the right to be forgotten)
currents replay --checkpoint P re-score history in a namespace of its own; currents report
currents schemas export DIR    JSON Schema of every message, for other languages
"""

import argparse
import importlib
import logging
import sys
from pathlib import Path

from stream.connection import ConnectionFailed
from stream.settings import Settings, SettingsError

__all__ = ["main"]

DEFAULT_KAFKA_DIR = Path(".currents/kafka")
DEMO_KAFKA_DIR = Path(".currents/demo/kafka")  # wiped on every demo run
DEFAULT_KAFKA_PORT = 9092


def cmd_kafka(args: argparse.Namespace) -> int:
    from stream.local_kafka import KafkaError, ensure_jars, single_node

    logging.getLogger("kafka").setLevel(logging.WARNING)  # the start's probe is not news
    # a broker made secure stays secure: its data holds the SCRAM users and certificates
    secure = args.secure or (args.kafka_dir / "security" / "broker.pem").exists()
    kafka = single_node(args.kafka_dir, args.port, secure=secure)
    try:
        if args.action == "fetch":
            print(f"Kafka jars in {ensure_jars()}")
        elif args.action == "start":
            kafka.start()
            print(f"Kafka running at {kafka.bootstrap} (data in {args.kafka_dir})")
            if secure:
                print(_secure_connection(kafka, args.kafka_dir / "client.env"))
        elif args.action == "stop":
            kafka.stop()
            print("Kafka stopped")
        else:
            rows = kafka.status()
            for row in rows:
                state = "serving" if row["serving"] else ("starting" if row["pid"] else "stopped")
                print(f"node {row['node']}  127.0.0.1:{row['port']}  pid={row['pid']}  {state}")
            return 0 if all(row["serving"] for row in rows) else 3
    except KafkaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _secure_connection(kafka, env_file: Path) -> str:
    """Write the variables that connect to a secure local broker to `env_file` (the password
    by its file, never its value); say how to use them."""
    security = kafka.client_security
    lines = [
        f"CURRENTS_BOOTSTRAP={kafka.bootstrap}",
        f"CURRENTS_KAFKA_SECURITY_PROTOCOL={security.security_protocol}",
        f"CURRENTS_KAFKA_SASL_MECHANISM={security.sasl_mechanism}",
        f"CURRENTS_KAFKA_SASL_USERNAME={security.sasl_username}",
        f"CURRENTS_KAFKA_SASL_PASSWORD_FILE={kafka.password_file.absolute()}",
        f"CURRENTS_KAFKA_SSL_CAFILE={security.ssl_cafile.absolute()}",
    ]
    env_file.write_text("\n".join(lines) + "\n")
    return (
        "It accepts only SASL_SSL (SCRAM-SHA-512 or -256, TLS with its own CA). Connect with\n"
        + "".join(f"  {line}\n" for line in lines)
        + f"(written to {env_file}; `cp {env_file} .env` makes every command use them)"
    )


def cmd_topics(args: argparse.Namespace) -> int:
    from stream.topics import ensure_topics

    settings = Settings.from_env()
    settings.cluster.check()
    created = ensure_topics(settings)
    print(f"created: {', '.join(created) or 'nothing (all topics exist)'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.outages import EXIT_FATAL, BrokerUnavailable, patiently

    settings = Settings.from_env()
    try:  # a refusal ends here, with its cause (before torch); an outage is waited out
        patiently(settings.cluster.check, "connecting to Kafka", settings.outage_budget)
    except BrokerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL

    from stream.app import create_app
    from stream.topics import ensure_topics
    from stream.worker import create_worker

    ensure_topics(settings)
    create_worker(create_app(settings), settings, args.loglevel).execute_from_commandline()
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError
    from pydantic import ValidationError

    from stream.produce import quiet_kafka_logs, send_erasures

    quiet_kafka_logs()
    settings = Settings.from_env()
    settings.cluster.check()
    try:
        send_erasures(settings, args.user_ids)
    except ValidationError as error:
        print(f"error: not a user id: {error.errors(include_url=False)[0]['msg']}", file=sys.stderr)
        return 2
    except KafkaError as error:
        print(f"error: the erasures were not all delivered: {error!r}", file=sys.stderr)
        return 1
    print(
        f"sent the erasure of {len(args.user_ids)} user(s) to {settings.events_topic}. The "
        f"owning worker deletes each state (RocksDB and a changelog tombstone) and publishes a "
        f"tombstone to {settings.updates_topic}. Events already in {settings.events_topic} "
        "stay until its retention, and updates consumers have read are theirs to delete."
    )
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(args.directory):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args)


def add_kafka_arguments(parser: argparse.ArgumentParser, data_dir: Path) -> None:
    parser.add_argument(
        "--kafka-dir", type=Path, default=data_dir, help=f"local broker data (default {data_dir})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_KAFKA_PORT,
        help=f"local broker port; its controller uses port+1 (default {DEFAULT_KAFKA_PORT})",
    )


# Commands whose module provides add_arguments(parser) and run(args) -> exit code, or, for a
# module serving several commands, COMMANDS[name] = (description, add_arguments, run).
PLUGGED_COMMANDS = {
    "produce": ("stream.produce", "stream events (and the catalog) into Kafka at a chosen rate"),
    "tail": ("stream.tail", "pretty-print the interest updates workers publish"),
    "replay": ("stream.replay", "re-score history with a model version, beside the live workers"),
    "report": ("stream.report", "prequential quality of a replay over time; compare two"),
    "train": ("model.cli", "train the interest model on an event log; write a checkpoint"),
    "evaluate": ("model.cli", "full-ranking HR/NDCG of a checkpoint and the baselines"),
}


def add_kafka_command(commands) -> None:
    kafka = commands.add_parser("kafka", help="the local single-node Kafka broker (KRaft)")
    kafka.add_argument("action", choices=["start", "stop", "status", "fetch"])
    add_kafka_arguments(kafka, DEFAULT_KAFKA_DIR)
    kafka.add_argument(
        "--secure",
        action="store_true",
        help="start: accept only SASL_SSL, with a SCRAM user and a CA and broker certificate "
        "it generates (openssl); prints the CURRENTS_KAFKA_* settings to connect, and a "
        "broker started so stays so",
    )
    kafka.set_defaults(run=cmd_kafka)


def add_forget_command(commands) -> None:
    forget = commands.add_parser(
        "forget",
        help="erase users: their states, and a tombstone on the updates topic",
        description="Send an erasure of each user to the events topic, keyed by the user: the "
        "worker owning the user deletes the user's state (RocksDB and a changelog tombstone) "
        "and publishes a tombstone (key user id, no value) to the updates topic; the user's "
        "next event starts from a fresh state. Replays see the erasure too.",
    )
    forget.add_argument("user_ids", nargs="+", metavar="USER_ID", help="users to forget")
    forget.set_defaults(run=cmd_forget)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="currents",
        description="Currents: a streaming user-interest engine on Kafka and Faust.",
        epilog="Settings come from CURRENTS_* environment variables or a .env file (see README, "
        "Configuration); KAFKA_BOOTSTRAP=host:port points every command at an existing cluster, "
        "CURRENTS_KAFKA_* say how to connect to it (README, Connect to your cluster).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the whole product locally: broker, worker, a drifting demo stream, live updates",
    )
    add_kafka_arguments(demo, DEMO_KAFKA_DIR)
    demo.add_argument("--users", type=int, default=300, help="demo users (default 300)")
    demo.add_argument(
        "--events-per-user", type=int, default=60, help="events of each user (default 60)"
    )
    demo.add_argument(
        "--rate", type=float, default=100.0, help="events per second, 0 = at once (default 100)"
    )
    demo.add_argument(
        "--epochs", type=int, default=8, help="training epochs of the demo model (default 8)"
    )
    demo.set_defaults(run=cmd_demo)

    add_kafka_command(commands)

    worker = commands.add_parser("worker", help="run a Faust worker until SIGINT/SIGTERM")
    worker.add_argument("--loglevel", default="info", help="debug, info, warning (default info)")
    worker.set_defaults(run=cmd_worker)

    topics = commands.add_parser("topics", help="create the Currents topics if missing")
    topics.set_defaults(run=cmd_topics)

    add_forget_command(commands)

    for name, (module, summary) in PLUGGED_COMMANDS.items():
        command = commands.add_parser(name, help=summary)
        if argv and argv[0] == name:  # import (torch, kafka) only for the command that runs
            plugged = importlib.import_module(module)
            description, add_arguments, run = getattr(plugged, "COMMANDS", {}).get(
                name, (plugged.__doc__, getattr(plugged, "add_arguments", None), None)
            )
            command.description = description  # the module says what the command does
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            add_arguments(command)
            command.set_defaults(run=run or plugged.run)

    schemas = commands.add_parser("schemas", help="message schemas")
    schemas_commands = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_commands.add_parser("export", help="write one JSON Schema file per message")
    export.add_argument("directory", type=Path, help="output folder (created if missing)")
    export.set_defaults(run=cmd_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except SettingsError as error:  # one line naming the variable, never a secret's value
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConnectionFailed as error:  # one line naming the cause
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
