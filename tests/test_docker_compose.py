"""docker-compose.yml cannot run here (no Docker engine); check it against the real settings."""

import os
from pathlib import Path

import yaml

from stream.local_kafka import KAFKA_VERSION
from stream.settings import ENV_PREFIX, Settings

COMPOSE = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
WORKERS = ["worker", "worker-gpu"]


def listeners(spec: str) -> dict[str, str]:
    return dict(item.split("://") for item in spec.split(","))


def settings_of(env: dict, monkeypatch) -> Settings:
    """The settings a container with exactly `env` reads."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "KAFKA_BOOTSTRAP":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings.from_env()


def test_broker_is_the_kafka_release_the_project_runs_locally():
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert env["KAFKA_NUM_PARTITIONS"] == Settings().partitions


def test_worker_environment_names_only_real_settings(monkeypatch):
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {"KAFKA_BOOTSTRAP"}
    for name in WORKERS:
        env = COMPOSE["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        settings = settings_of(env, monkeypatch)
        assert (
            settings.partitions
            == COMPOSE["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]
        )


def test_workers_reach_the_broker_and_publish_their_web_port(monkeypatch):
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    advertised = set(listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).values())
    data_volumes = set()
    for name in WORKERS:
        service = COMPOSE["services"][name]
        settings = settings_of(service["environment"], monkeypatch)
        assert settings.bootstrap in advertised
        assert settings.web_host == name  # peers route HTTP requests to this name
        assert any(p.endswith(f":{settings.web_port}") for p in service["ports"])
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        data_volumes.add(service["volumes"][0].split(":")[0])
    assert len(data_volumes) == len(WORKERS)  # RocksDB folders are never shared


def test_workers_load_the_mounted_checkpoint_and_the_gpu_worker_runs_on_cuda(monkeypatch):
    for name in WORKERS:
        service = COMPOSE["services"][name]
        settings = settings_of(service["environment"], monkeypatch)
        mounts = [volume.split(":")[1] for volume in service["volumes"]]
        assert any(str(settings.checkpoint).startswith(mount + "/") for mount in mounts)
    cpu, gpu = (COMPOSE["services"][name]["environment"] for name in WORKERS)
    assert "CURRENTS_DEVICE" not in cpu and gpu["CURRENTS_DEVICE"] == "cuda"


def test_gpu_worker_reserves_an_nvidia_device():
    gpu = COMPOSE["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_workers_are_restarted_when_they_exit_on_failure_and_given_time_to_stop():
    for name in WORKERS:
        service = COMPOSE["services"][name]
        assert service["restart"] == "on-failure"  # exit code 70: restart and resume
        assert service["stop_grace_period"] == "30s"  # a worker's stop is bounded by 20 s
