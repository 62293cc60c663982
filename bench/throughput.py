"""Throughput and latency of the engine against two pass-through peers, on one broker.

    python bench/throughput.py [--events 100000] [--checkpoint PATH] [--profile]

(a) the sustained rates of two peers that forward the same records: a bare Faust agent, and a
    plain Python loop over librdkafka (bench/librdkafka_passthrough.py);
(b) the sustained rate of the engine (CPU, micro-batched model step, RocksDB states), all
    measured on a backlog of the same ml-100k events, from the Kafka timestamps of the outputs;
(c) produce -> output latency (p50/p99 per event), for the engine (to the interest update)
    and the pass-through (to the forwarded record), at half of the engine's max rate (the
    target) and at half of the pass-through's max rate (a rate both sustain): a fresh process
    each, sent 5 s of warm-up and then 20 s measured at that rate, with the CPU shares of the
    measured window (worker, load generator, the rest: the broker, mostly; the machine's idle
    and stolen shares).
Before all three, the broker gets 30 s of paced traffic through the engine on topics of its
own, not measured (--broker-warmup-seconds): a fresh broker compiles its code for that traffic
when it first sees it, and the first measured phase would pay for it.
Without --checkpoint the model is untrained but of the default size: same cost per event.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from kafka import TopicPartition

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.data import load_movielens
from model.encoder import default_encoder
from model.interest import InterestModel
from stream.connection import Cluster
from stream.local_kafka import LocalKafka, free_port
from stream.processes import get_json, spawn_worker, terminate, wait_for
from stream.produce import to_behavior_event, to_item_upsert
from stream.settings import Settings
from stream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
BROKER_WARMUP_RATE = 2000.0  # events/s: within what the engine sustains on the 2-core box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument(
        "--events", type=int, default=100_000, help="backlog size (100000: all of ml-100k)"
    )
    parser.add_argument("--checkpoint", type=Path, help="default: untrained, default size")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="measured (20)")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="sent to each (c) phase's fresh worker first, not measured (5)",
    )
    parser.add_argument(
        "--broker-warmup-seconds", type=float, default=30.0,
        help=f"paced traffic ({BROKER_WARMUP_RATE:.0f} events/s) through the engine on topics "
        "of its own, before anything is measured (30; 0: none)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy the engine during (b)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    started = cpu_times()
    work = Path(tempfile.mkdtemp(prefix="currents-bench-"))
    events, items = load_movielens(args.data)
    events = sorted((to_behavior_event(e) for e in events), key=lambda e: e.timestamp)
    catalog = [to_item_upsert(i) for i in items.values()]
    backlog = events[: args.events]  # the latency phases send what follows (unsent), then laps
    checkpoint = args.checkpoint or untrained_checkpoint(work / "model.pt", catalog)

    kafka, cluster = None, Settings.from_env().cluster  # KAFKA_BOOTSTRAP, CURRENTS_KAFKA_*
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        kafka = LocalKafka(work / "kafka", partitions=args.partitions, heap="1g")
        kafka.start()
        cluster = kafka.cluster
    try:
        results = {
            "machine": machine(),
            "events": len(backlog),
            "partitions": args.partitions,
            "checkpoint": str(args.checkpoint or "untrained, default ModelConfig"),
            "git": git_sha(),
        }
        settings = Settings(
            app_id="bench-engine", bootstrap=cluster.bootstrap, kafka=cluster.security,
            partitions=args.partitions,
            **engine_topics("bench"), data_dir=work / "engine", web_port=free_port(),
            checkpoint=checkpoint,
        )  # fmt: skip
        if args.broker_warmup_seconds > 0:
            per_5s = warm_broker(settings, work, catalog, events, args.broker_warmup_seconds)
            results["broker_warmup_p99_ms_per_5s"] = per_5s
            print(
                f"broker warm-up: {args.broker_warmup_seconds:.0f} s at {BROKER_WARMUP_RATE:.0f} "
                f"events/s, not measured (p99 of each 5 s: {milliseconds(per_5s)} ms)",
                flush=True,
            )
        results["passthrough_events_per_s"] = passthrough_rate(cluster, work, backlog, args)
        print(f"(a) pass-through: {results['passthrough_events_per_s']:.0f} events/s", flush=True)
        plain = passthrough_rate(cluster, work, backlog, args, peer="librdkafka")
        results["librdkafka_events_per_s"] = plain
        print(f"(a') plain librdkafka loop: {plain:.0f} events/s", flush=True)
        rate, profile = engine_rate(settings, work, catalog, backlog, args.profile)
        results["engine_events_per_s"] = rate
        results["ratio"] = rate / results["passthrough_events_per_s"]
        results["ratio_to_librdkafka"] = rate / plain
        print(
            f"(b) engine: {rate:.0f} events/s ({results['ratio']:.0%} of the Faust pass-through, "
            f"{results['ratio_to_librdkafka']:.1%} of the plain loop)"
        )
        if profile:
            results["profile"] = profile
            print("    where the engine's time goes (py-spy, % of samples):")
            for name, share in profile:
                print(f"      {share:5.1f}%  {name}")
        # at half the engine's max rate (the target), and at half the pass-through's, which the
        # pass-through itself can sustain: the same rate for both, a fair peer
        results["latency"] = []
        taken = len(backlog)  # each phase sends ratings not sent before: the engine drops repeats
        for target in (rate / 2, results["passthrough_events_per_s"] / 2):
            warm = int(target * args.warmup_seconds)
            phase = unsent(events, taken, warm + int(target * args.latency_seconds))
            taken += len(phase)
            warmup, stream = phase[:warm], phase[warm:]  # the peer gets the same, on its topic
            for name, measure, where in (
                ("engine", engine_latency, settings),
                ("passthrough", passthrough_latency, cluster),
            ):
                p50, p99, count, cpu, per_5s = measure(where, work, warmup, stream, target)
                results["latency"].append(
                    {"of": name, "rate": target, "events": count, "p50_ms": p50, "p99_ms": p99,
                     "p99_ms_per_5s": per_5s, "cpu": cpu}
                )  # fmt: skip
                print(
                    f"(c) {name} at {target:.0f} events/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
                    f"(CPU: worker {cpu['worker']:.0%} of a core, load generator "
                    f"{cpu['load_generator']:.0%}, the rest (the broker) {cpu['rest']:.0%}, "
                    f"machine idle {cpu['machine_idle']:.0%}, stolen {cpu['machine_steal']:.0%}); "
                    f"p99 of each 5 s: {milliseconds(per_5s)} ms"
                )
        results["cpu_steal"] = steal_share(started)
        print(f"CPU time taken by the hypervisor during the run: {results['cpu_steal']:.0%}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if kafka is not None:
            kafka.stop()


def warm_broker(settings: Settings, work: Path, catalog, events, seconds: float) -> list[float]:
    """Send `seconds` of `events` at `BROKER_WARMUP_RATE` through the engine, under an app id
    and topics of its own (the measured engine's state and topics are untouched); return the
    p99 of each 5 s. A fresh broker compiles (JIT) its code for paced traffic, many small
    produce and fetch requests, when that traffic begins: on the 2-core box its compiler took
    up to 78 % of a core for ~11 s, and the first measured phase paid for it, not the worker
    (docs/benchmarks.md). A long-running broker did that long ago."""
    warm = settings.model_copy(
        update={
            "app_id": "bench-broker-warmup", **engine_topics("bench.warmup"),
            "data_dir": work / "warmup", "web_port": free_port(),
        }
    )  # fmt: skip
    ensure_topics(warm)
    produce(warm.cluster, warm.catalog_topic, catalog, lambda i: i.item_id)
    stream = unsent(events, 0, int(BROKER_WARMUP_RATE * seconds))
    *_, per_5s = engine_latency(warm, work, [], stream, BROKER_WARMUP_RATE)
    return per_5s


def engine_topics(prefix: str) -> dict[str, str]:
    """The engine's five topics, named under `prefix`."""
    return {
        "events_topic": f"{prefix}.events", "catalog_topic": f"{prefix}.catalog",
        "item_vectors_topic": f"{prefix}.item-vectors", "updates_topic": f"{prefix}.updates",
        "dead_letter_topic": f"{prefix}.dead-letters",
    }  # fmt: skip


def milliseconds(values) -> str:
    return " ".join(f"{v:.0f}" for v in values)


def unsent(live: list, start: int, count: int) -> list:
    """`count` ratings from position `start` of `live`, continued past its end by the same
    ratings again as new events of new users (ids suffixed with the round), one time span
    later: a fast engine's phases need more ratings than ml-100k has after the backlog."""
    span = live[-1].timestamp - live[0].timestamp
    phase = []
    for position in range(start, start + count):
        lap, event = divmod(position, len(live))
        event = live[event]
        if lap:
            event = event.model_copy(
                update={
                    "event_id": f"{event.event_id}~{lap}",
                    "user_id": f"{event.user_id}~{lap}",
                    "timestamp": event.timestamp + lap * span,
                }
            )
        phase.append(event)
    return phase


def untrained_checkpoint(path: Path, catalog) -> Path:
    torch.manual_seed(0)
    warm = {item.item_id: n + 1 for n, item in enumerate(catalog)}
    model = InterestModel(ModelConfig(n_items=len(warm) + 1)).eval()
    save_checkpoint(path, model, warm, [], default_encoder())
    return path


def produce(cluster: Cluster, topic: str, messages, key_of) -> None:
    producer = cluster.producer(acks="all", linger_ms=5)
    for message in messages:
        value = message.model_dump_json().encode()
        producer.send(topic, key=key_of(message).encode(), value=value)
    producer.flush()
    producer.close()


def output_rate(cluster: Cluster, topic: str, weight, total: int, worker, timeout=600.0) -> float:
    """Events/s from the Kafka timestamps of the first and last output records."""
    consumer = cluster.consumer(
        topic, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=1000,
    )  # fmt: skip
    first = last = None
    done = 0
    deadline = time.monotonic() + timeout
    while done < total and time.monotonic() < deadline and worker.poll() is None:
        for record in consumer:
            first = record.timestamp if first is None else min(first, record.timestamp)
            last = record.timestamp if last is None else max(last, record.timestamp)
            done += weight(record)
    consumer.close()
    if done < total:
        raise TimeoutError(f"{topic}: {done} of {total} events after {timeout:.0f}s")
    return done / max((last - first) / 1000, 1e-3)


# Each peer forwards its own topic "bench.<peer>.in" to "bench.<peer>.out".
PEERS = {
    "passthrough": ["bench/passthrough.py", "worker", "-l", "warn"],  # a bare Faust agent
    "librdkafka": ["bench/librdkafka_passthrough.py"],  # a plain Python loop, no framework
}


def passthrough_rate(cluster: Cluster, work: Path, backlog, args, peer="passthrough") -> float:
    produce(cluster, f"bench.{peer}.in", backlog, lambda e: e.user_id)
    worker = start_passthrough(cluster, work, args.partitions, peer)
    try:
        return output_rate(cluster, f"bench.{peer}.out", lambda r: 1, len(backlog), worker)
    finally:
        terminate(worker)


def start_passthrough(cluster: Cluster, work: Path, partitions: int = 8, peer="passthrough"):
    env = {
        **os.environ, **Settings(bootstrap=cluster.bootstrap, kafka=cluster.security).to_env(),
        "BENCH_APP_ID": f"bench-{peer}",
        "BENCH_SOURCE": f"bench.{peer}.in", "BENCH_SINK": f"bench.{peer}.out",
        "BENCH_PARTITIONS": str(partitions), "BENCH_DATA_DIR": str(work / peer),
    }  # fmt: skip
    script, *arguments = PEERS[peer]
    with open(work / f"{peer}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / script), *arguments],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def engine_rate(settings: Settings, work: Path, catalog, backlog, profile: bool):
    ensure_topics(settings)
    produce(settings.cluster, settings.catalog_topic, catalog, lambda i: i.item_id)
    worker = spawn_worker(settings, work / "engine-encode.log", loglevel="warning")
    ready(settings, worker)  # encodes the catalog once, then stops: the backlog comes next
    terminate(worker)
    produce(settings.cluster, settings.events_topic, backlog, lambda e: e.user_id)
    worker = spawn_worker(settings, work / "engine.log", loglevel="warning")
    spy = None
    try:
        ready(settings, worker)
        if profile:  # from ready to the last update: the backlog, not the start
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "100",
                 "--output", str(work / "engine.pyspy")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        rate = output_rate(
            settings.cluster, settings.updates_topic,
            lambda r: len(json.loads(r.value)["events"]), len(backlog), worker,
        )  # fmt: skip
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded, then exits
            spy.wait()
        terminate(worker)
    return rate, (summarise_profile(work / "engine.pyspy") if profile else None)


def latency(cluster: Cluster, source: str, sink: str, warmup, stream, rate: float, covered, pid):
    """Per-event produce -> output latency, from Kafka timestamps on both sides: the event's
    own (set when the load generator sends it), and that of the first output record that covers
    it (`covered(record)`: event ids). `warmup` is sent at the same rate just before `stream` and
    not counted: a process that has just started fetches metadata, opens stores and fills
    caches on its first events, which a long-running worker did long ago. The outputs are read
    afterwards, from the sink's end offsets taken before: while the worker is measured, only the
    load generator runs beside it. Returns p50, p99, the events measured, the CPU shares of
    the measured window, and the p99 of each 5 s of it (a tail spread out, or one episode)."""
    start = end_offsets(cluster, sink)
    sent, cpu = send_paced(cluster, source, warmup, stream, rate, pid)
    consumer = cluster.consumer(enable_auto_commit=False, consumer_timeout_ms=1000)
    consumer.assign(list(start))
    for partition, offset in start.items():
        consumer.seek(partition, offset)
    latencies = {}
    deadline = time.monotonic() + 60
    try:
        while len(latencies) < len(sent) and time.monotonic() < deadline:
            for record in consumer:
                for event_id in covered(record):
                    if event_id in sent and event_id not in latencies:
                        latencies[event_id] = record.timestamp - sent[event_id]
    finally:
        consumer.close()
    if not latencies:
        raise TimeoutError(f"{sink}: no output for the {len(sent)} events sent to {source}")
    ordered = sorted(latencies.values())
    first = min(sent.values())
    slices: dict[int, list[int]] = {}  # the measured window in 5 s slices, by send time
    for event_id, took in latencies.items():
        slices.setdefault((sent[event_id] - first) // 5000, []).append(took)
    per_5s = [quantile(sorted(slices[s]), 0.99) for s in sorted(slices)]
    return quantile(ordered, 0.50), quantile(ordered, 0.99), len(ordered), cpu, per_5s


def quantile(ordered: list, q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def send_paced(cluster: Cluster, topic: str, warmup, stream, rate: float, pid: int):
    """Send `warmup`, then `stream`, at `rate`, in ticks of 1 ms; return (event id -> the
    record's timestamp in ms, set here, for `stream`; CPU shares while `stream` was sent).

    librdkafka (confluent-kafka) rather than a Python client: aiokafka's producer took 40-58 %
    of a core at 1,388 records/s and kafka-python's more, on the two cores the worker and the
    broker run on; librdkafka took 8-13 % (docs/benchmarks.md)."""
    producer = cluster.confluent_producer(
        **{"acks": 1, "linger.ms": 0, "partitioner": "murmur2_random"}  # Kafka's partitioner
    )
    records = [
        (e.user_id.encode(), e.model_dump_json().encode(), e.event_id) for e in [*warmup, *stream]
    ]
    sent, started, index, usage = {}, time.monotonic(), 0, None
    while index < len(records):
        due = min(len(records), int((time.monotonic() - started) * rate) + 1)
        if usage is None and due > len(warmup):
            usage = CpuUsage(pid)  # the measured window starts
        now = int(time.time() * 1000)
        for key, value, event_id in records[index:due]:
            producer.produce(topic, value=value, key=key, timestamp=now)
            if index >= len(warmup):
                sent[event_id] = now
            index += 1
        producer.poll(0)
        time.sleep(0.001)
    cpu = usage.shares()
    if producer.flush(30):
        raise RuntimeError(f"{topic}: records not delivered")
    return sent, cpu


class CpuUsage:
    """CPU shares since creation: of one core for the worker (all its threads), this process
    (the load generator) and the rest of the machine's busy time (the broker, mostly); of the
    machine for idle and stolen time."""

    def __init__(self, pid: int):
        self.pid, self.started = pid, time.monotonic()
        self.worker, self.own, self.machine = process_cpu(pid), os.times(), cpu_times()

    def shares(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        own = os.times()
        machine = [now - then for then, now in zip(self.machine, cpu_times(), strict=True)]
        busy = (sum(machine) - machine[3] - machine[4] - machine[7]) / os.sysconf("SC_CLK_TCK")
        worker = (process_cpu(self.pid) - self.worker) / wall
        load_generator = (own.user + own.system - self.own.user - self.own.system) / wall
        return {
            "worker": worker,
            "load_generator": load_generator,
            "rest": max(0.0, busy / wall - worker - load_generator),
            "machine_idle": (machine[3] + machine[4]) / max(1, sum(machine)),
            "machine_steal": machine[7] / max(1, sum(machine)),
        }


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_offsets(cluster: Cluster, topic: str) -> dict[TopicPartition, int]:
    """The next offset of every partition of `topic`: where this phase's outputs start."""
    consumer = cluster.consumer(enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic} does not exist")
        return consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()


def engine_latency(settings: Settings, work: Path, warmup, stream, rate: float):
    worker = spawn_worker(settings, work / "engine-latency.log", loglevel="warning")
    try:
        ready(settings, worker)
        return latency(
            settings.cluster, settings.events_topic, settings.updates_topic, warmup, stream,
            rate, lambda r: [ref["event_id"] for ref in json.loads(r.value)["events"]], worker.pid,
        )  # fmt: skip
    finally:
        terminate(worker)


def passthrough_latency(cluster: Cluster, work: Path, warmup, stream, rate: float):
    worker = start_passthrough(cluster, work)
    try:
        time.sleep(15)  # joined its group and caught up (its backlog was consumed in (a))
        return latency(
            cluster, "bench.passthrough.in", "bench.passthrough.out", warmup, stream, rate,
            lambda r: [json.loads(r.value)["event_id"]], worker.pid,
        )  # fmt: skip
    finally:
        terminate(worker)


def ready(settings: Settings, worker) -> None:
    health = f"http://127.0.0.1:{settings.web_port}/health"
    wait_for(lambda: (get_json(health)[1] or {}).get("ready"), 600, what="ready", process=worker)


def summarise_profile(path: Path, top: int = 12) -> list[tuple[str, float]]:
    """Leaf frames of py-spy's collapsed stacks: where the samples were taken."""
    if not path.exists():
        return [("py-spy not available", 0.0)]
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(samples)
        total += int(samples)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(name, 100 * n / total) for name, n in ranked]


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def cpu_times() -> list[int]:
    """The machine's CPU time so far by kind (user, nice, system, idle, iowait, irq, softirq,
    steal), in ticks."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_share(before: list[int]) -> float:
    """Share of the CPU time since `before` that the hypervisor gave to other guests: the
    figures of a run with much of it are not comparable with those of a quiet one."""
    spent = [now - then for then, now in zip(before, cpu_times(), strict=True)]
    return spent[7] / max(1, sum(spent))


def git_sha() -> str:
    command = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]  # the tree, not the cwd
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout.strip()


if __name__ == "__main__":
    main()
