"""A secured cluster and an authenticated HTTP API, as users meet them: refusals end commands
with their cause, secrets appear nowhere, and the token guards user and item pages."""

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from pydantic import SecretStr
from support import behaviour, keyed, produce, samples

from stream.local_kafka import free_port, make_certificates
from stream.processes import get_json, wait_for

TOKEN = "web-t0ken-that-must-not-leak"


def currents(settings, *args: str, timeout: float = 60, **extra_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURRENTS_", "KAFKA_B"))}
    env.update(settings.to_env(), CURRENTS_KAFKA_HOME=os.environ.get("CURRENTS_KAFKA_HOME", ""))
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env={k: v for k, v in env.items() if v},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture()
def secured(settings_factory):
    settings = settings_factory()
    if not settings.kafka.sasl:
        pytest.skip("the cluster in KAFKA_BOOTSTRAP is not SASL")
    return settings


def refused_by(settings, cause: str, tmp_path):
    kafka = settings.kafka
    if cause == "wrong password":
        kafka = kafka.model_copy(update={"sasl_password": SecretStr("not-the-password")})
    elif cause == "unknown user":
        kafka = kafka.model_copy(update={"sasl_username": "nobody"})
    else:  # a CA that did not sign the broker's certificate
        kafka = kafka.model_copy(update={"ssl_cafile": make_certificates(tmp_path / "other-ca")})
    return settings.model_copy(update={"kafka": kafka})


@pytest.mark.parametrize(
    "cause, says",
    [
        ("wrong password", "authentication failed: wrong password or unknown user"),
        ("unknown user", "authentication failed: wrong password or unknown user"),
        ("untrusted CA", "the broker's certificate is not trusted"),
    ],
)
def test_a_refused_connection_ends_worker_produce_and_tail_with_its_cause(
    secured, cause, says, tmp_path
):
    settings = refused_by(secured, cause, tmp_path)
    commands = {
        "worker": ["worker"],
        "produce": ["produce", "--dataset", "demo", "--limit", "1"],
        "tail": ["tail", "--timeout", "60"],
    }
    for name, args in commands.items():
        started = time.monotonic()
        done = currents(settings, *args)
        took = time.monotonic() - started
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and took < 30, (name, took, done.stderr[-2000:])
        assert len(lines) == 1 and says in lines[0], (name, done.stderr[-2000:])
        password = settings.kafka.sasl_password.get_secret_value()
        assert password not in done.stdout + done.stderr
        print(f"{cause}: {name} exited {done.returncode} after {took:.1f} s: {lines[0]}")


def test_secrets_from_the_environment_or_files_appear_in_no_output(secured, tmp_path, caplog):
    password = secured.kafka.sasl_password.get_secret_value()
    # kafka-python logs an admin client's configuration (the commands quiet its logger)
    with caplog.at_level(logging.DEBUG, logger="kafka"):
        for client in (
            secured.cluster.admin(),
            secured.cluster.consumer(),
            secured.cluster.producer(),
        ):
            client.close()
    assert "kafka.admin.client" in caplog.text  # its debug lines were captured
    assert password not in caplog.text
    (tmp_path / "password").write_text(password + "\n")
    by_file = {
        "CURRENTS_KAFKA_SASL_PASSWORD": "",
        "CURRENTS_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
        "CURRENTS_WEB_TOKEN": TOKEN,
    }
    outputs = []
    for args in (["--help"], ["worker", "--help"], ["produce", "--help"], ["tail", "--help"],
                 ["topics"]):  # fmt: skip
        done = currents(secured, *args, **by_file)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout + done.stderr)
    # an invalid setting next to the secrets: the error names it, and shows no value
    bad = currents(secured, "topics", CURRENTS_PARTITIONS="many", CURRENTS_WEB_TOKEN=TOKEN)
    assert bad.returncode == 2 and "CURRENTS_PARTITIONS" in bad.stderr
    outputs.append(bad.stdout + bad.stderr)
    for output in outputs:
        assert password not in output and TOKEN not in output


def test_the_token_guards_user_and_item_pages_and_travels_with_routed_requests(
    engine_settings, start_worker, catalog, tmp_path
):
    first = engine_settings.model_copy(update={"web_token": SecretStr(TOKEN)})
    second = first.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / "second"})
    workers = [start_worker(first), start_worker(second)]
    for worker in workers:
        worker.wait_ready()
    events = behaviour(catalog, users=12, events=120)
    produce(first.cluster, first.events_topic, keyed(events, "user_id"))
    users = sorted({e.user_id for e in events})
    applied = lambda w: all(  # noqa: E731
        get_json(w.url(f"/users/{u}/interests"), token=TOKEN)[0] == 200 for u in users
    )
    wait_for(lambda: all(applied(w) for w in workers), 120, what="every user served")
    # both workers own partitions, so each answers some users by routing to the other
    owned = [{dict(k)["partition"] for k in samples(w, "currents_consumer_lag")} for w in workers]
    assert all(owned) and not owned[0] & owned[1], owned
    for worker in workers:
        for path in [*(f"/users/{u}/interests" for u in users), f"/items/{catalog[0].item_id}"]:
            assert get_json(worker.url(path))[0] == 401, path
            assert get_json(worker.url(path), token="wrong")[0] == 401, path
            assert get_json(worker.url(path), token=TOKEN)[0] == 200, path
        page = worker.url(f"/users/{users[0]}")  # the live page (HTML), routed like the view
        assert status_of(page) == 401 and status_of(page, token=TOKEN) == 200
        assert get_json(worker.url("/health"))[0] == 200
        assert samples(worker, "currents_events_total")  # /metrics open by default
    password = first.kafka.sasl_password.get_secret_value() if first.kafka.sasl else TOKEN
    for worker in workers:
        assert worker.stop() == 0, worker.tail()
        log = worker.log.read_text(errors="replace")
        assert TOKEN not in log and password not in log


def status_of(url: str, token: str | None = None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code
