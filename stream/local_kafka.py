"""A real Apache Kafka cluster on 127.0.0.1, run from Maven Central jars.

Development machines and CI have Java and Maven but no Docker, so Currents fetches the broker
jars itself (`kafka_pom.xml`), writes a KRaft config in which every node is broker and controller,
formats storage, and supervises the JVMs. One class serves `currents kafka start|stop|status`
(persistent data, fixed ports, detached) and the test suite (throwaway data, free ports).

With `secure=True` the client listener accepts only SASL_SSL: SCRAM-SHA-512 and -256 users made
at format time, and a CA and broker certificate generated with `openssl` under
`<data_dir>/security` (kept, with the passwords, so a restart serves the same credentials).
"""

import base64
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stream.connection import Cluster, KafkaSecurity

__all__ = [
    "CLIENT_USER",
    "KAFKA_VERSION",
    "KafkaError",
    "LocalKafka",
    "ensure_jars",
    "free_port",
    "make_certificates",
    "single_node",
]

KAFKA_VERSION = "4.3.1"
LOG4J2_VERSION = "2.25.4"  # the log4j2 version that Kafka release was built with
_READY_LINE = "Kafka Server started"
CLIENT_USER = "currents"  # the SCRAM user clients of a secure local broker connect as
_BROKER_USER = "broker"  # the brokers' own SCRAM user, between them

_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


def default_jar_home() -> Path:
    """Where broker jars are cached: $CURRENTS_KAFKA_HOME, else ~/.cache/currents/kafka."""
    root = os.environ.get("CURRENTS_KAFKA_HOME") or Path.home() / ".cache" / "currents" / "kafka"
    return Path(root) / KAFKA_VERSION


def ensure_jars(jar_home: Path | None = None) -> Path:
    """Return the folder of broker jars, fetching them with Maven on first use."""
    jar_home = jar_home or default_jar_home()
    lib = jar_home / "lib"
    if (jar_home / ".complete").exists():
        return lib
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise KafkaError(f"`{tool}` is not on PATH; the local broker needs Java 17+ and Maven")
    pom = resources.files("stream") / "kafka_pom.xml"
    staging = jar_home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with resources.as_file(pom) as pom_path:
        command = [
            "mvn", "-B", "-ntp", "-q", "-f", str(pom_path),
            f"-Dkafka.version={KAFKA_VERSION}", f"-Dlog4j2.version={LOG4J2_VERSION}",
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise KafkaError(f"fetching Kafka jars failed:\n{result.stdout[-3000:]}{result.stderr}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (jar_home / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
    (jar_home / ".complete").touch()
    return lib


def free_port(consecutive: int = 1) -> int:
    """A port on 127.0.0.1 that is free now, with the `consecutive - 1` ports after it.

    Drawn below the kernel's ephemeral range: a port the kernel hands out can be taken by any
    outgoing connection between this check and the broker's bind (which failed CI once when a
    controller took port + 1).
    """
    low = _ephemeral_low() - consecutive
    for _ in range(200):
        first = random.randrange(10_000, low)
        if all(_bindable(port) for port in range(first, first + consecutive)):
            return first
    raise KafkaError(f"no {consecutive} free consecutive ports below {low} on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")):
    """A CA (`ca.pem`, `ca.key`) and a certificate it signs for `hosts` with its key, in one
    PEM file as Kafka's PEM keystore takes it (`broker.pem`); made with `openssl`. Returns the
    CA's path."""
    if shutil.which("openssl") is None:
        raise KafkaError("`openssl` is not on PATH; a secure local broker needs it")
    directory.mkdir(parents=True, exist_ok=True)
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    leaf = directory / "leaf.ext"
    leaf.write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", "/CN=Currents local CA", "-keyout", "ca.key", "-out", "ca.pem",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
         "-keyout", "broker.key", "-out", "broker.csr"],
        ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "3650", "-extfile", "leaf.ext", "-out", "broker.crt"],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run(["openssl", *step], cwd=directory, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaError(f"openssl {step[0]} failed: {result.stderr[-2000:]}")
    keystore = directory / "broker.pem"
    keystore.write_text(
        (directory / "broker.key").read_text() + (directory / "broker.crt").read_text()
    )
    for private in (keystore, directory / "broker.key", directory / "ca.key"):
        private.chmod(0o600)
    return directory / "ca.pem"


def _password(path: Path) -> str:
    """The password kept in `path`, made on first use (owner-only file)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None


class LocalKafka:
    """A KRaft cluster of `nodes` combined broker+controller JVMs under `data_dir`.

    `ports` and `controller_ports` are the nodes' client and controller ports; free ones are
    picked when they are not given, which suits tests. Data survives `stop()`: start again on
    the same `data_dir` with the same ports to resume.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 1,
        ports: list[int] | None = None,
        controller_ports: list[int] | None = None,
        heap: str = "512m",
        partitions: int = 8,
        jar_home: Path | None = None,
        secure: bool = False,
    ):
        ports = ports or [free_port() for _ in range(nodes)]
        controller_ports = controller_ports or [free_port() for _ in range(nodes)]
        if not len(ports) == len(controller_ports) == nodes:
            raise ValueError(f"{nodes} nodes need {nodes} ports and controller ports")
        self.data_dir = Path(data_dir).absolute()
        self.heap = heap
        self.partitions = partitions
        self.jar_home = jar_home or default_jar_home()
        self.secure = secure
        self.security_dir = self.data_dir / "security"
        self.nodes = [
            _Node(i + 1, port, cport, self.data_dir / f"node-{i + 1}")
            for i, (port, cport) in enumerate(zip(ports, controller_ports, strict=True))
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def password_file(self) -> Path:
        """The client user's password (secure only)."""
        return self.security_dir / "client.password"

    @property
    def client_security(self) -> KafkaSecurity:
        """How a client connects: SASL_SSL as CLIENT_USER with SCRAM-SHA-512, trusting the
        generated CA; PLAINTEXT when not secure."""
        if not self.secure:
            return KafkaSecurity()
        return KafkaSecurity(
            security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
            sasl_username=CLIENT_USER, sasl_password=_password(self.password_file),
            ssl_cafile=self.security_dir / "ca.pem",
        )  # fmt: skip

    @property
    def cluster(self) -> Cluster:
        return Cluster(self.bootstrap, self.client_security)

    def start(self, timeout: float = 120.0) -> None:
        """Fetch jars if needed, format new storage, start every node, wait until all serve."""
        lib = ensure_jars(self.jar_home)
        for node in self.nodes:
            if node.pid() and _alive(node.pid()):
                raise KafkaError(f"node {node.node_id} already runs (pid {node.pid()})")
            for port in (node.port, node.controller_port):
                if _port_open(port):
                    raise KafkaError(f"port {port} on 127.0.0.1 is already in use")
        cluster_id = self._cluster_id()
        formatters = [self._format(node, lib, cluster_id) for node in self.nodes]
        for node, formatter in zip(self.nodes, formatters, strict=True):
            out, _ = formatter.communicate(timeout=120)
            if formatter.returncode != 0:
                raise KafkaError(f"formatting node {node.node_id} failed:\n{out[-3000:]}")
        for node in self.nodes:
            self._launch(node, lib)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node: SIGTERM for a clean shutdown, SIGKILL after `timeout` seconds."""
        running = [(node, node.pid()) for node in self.nodes if node.pid() and _alive(node.pid())]
        for _, pid in running:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node, pid in running:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
            node.pid_file.unlink(missing_ok=True)
        for node in self.nodes:
            node.pid_file.unlink(missing_ok=True)

    def status(self) -> list[dict]:
        """One row per node: id, port, pid (or None) and whether it accepts connections."""
        return [
            {
                "node": node.node_id,
                "port": node.port,
                "pid": node.pid() if node.pid() and _alive(node.pid()) else None,
                "serving": _port_open(node.port),
                "log": str(node.log_file),
            }
            for node in self.nodes
        ]

    def _cluster_id(self) -> str:
        # Every node of a cluster must be formatted with the same id; keep it with the data.
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            id_file.write_text("A" + raw[1:])  # a leading '-' would read as a flag
        return id_file.read_text().strip()

    def _server_properties(self, node: _Node) -> Path:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, len(self.nodes))
        min_isr = 2 if replicas == 3 else 1
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            **self._listeners(node),
            "log.dirs": node.directory / "logs",
            "num.partitions": self.partitions,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            # a 2-core laptop or CI box: few threads, a small log-cleaner buffer for the heap
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
        }
        node.directory.mkdir(parents=True, exist_ok=True)
        path = node.directory / "server.properties"
        path.touch(mode=0o600)  # the brokers' own password, when secure
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return path

    def _listeners(self, node: _Node) -> dict:
        """Clients' listener: PLAINTEXT, or (secure) SASL_SSL only, SCRAM over TLS, which the
        brokers also use between them. The controller listener stays on 127.0.0.1."""
        name = "SASL_SSL" if self.secure else "PLAINTEXT"
        settings = {
            "listeners": f"{name}://127.0.0.1:{node.port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"{name}://127.0.0.1:{node.port}",
            "inter.broker.listener.name": name,
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": f"{name}:{name},CONTROLLER:PLAINTEXT",
        }
        if not self.secure:
            return settings
        if not (self.security_dir / "broker.pem").exists():
            make_certificates(self.security_dir)
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{_BROKER_USER}" password="{self._scram_users()[_BROKER_USER]}";'
        )
        return {
            **settings,
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": login,
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.security_dir / "broker.pem",
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.security_dir / "ca.pem",
        }

    def _scram_users(self) -> dict[str, str]:
        return {
            CLIENT_USER: _password(self.password_file),
            _BROKER_USER: _password(self.security_dir / "broker.password"),
        }

    def _java(self, lib: Path, *args: str, heap: str) -> list[str]:
        return [
            "java", f"-Xms{heap}", f"-Xmx{heap}",
            f"-Dlog4j2.configurationFile={self.jar_home / 'log4j2.properties'}",
            "-cp", str(lib / "*"), *args,
        ]  # fmt: skip

    def _format(self, node: _Node, lib: Path, cluster_id: str) -> subprocess.Popen:
        properties = self._server_properties(node)
        users = []
        if self.secure:  # SCRAM credentials live in the cluster metadata, made at format
            for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                for user, password in self._scram_users().items():
                    users += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        command = self._java(
            lib, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties),
            "--ignore-formatted", *users, heap="256m",
        )  # fmt: skip
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def _launch(self, node: _Node, lib: Path) -> None:
        command = self._java(
            lib,
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={node.directory / 'logs'}",
            "kafka.Kafka", str(node.directory / "server.properties"),
            heap=self.heap,
        )  # fmt: skip
        with open(node.log_file, "ab") as log:
            log.write(f"\n--- starting node {node.node_id} at {time.ctime()} ---\n".encode())
            log.flush()
            # its own session: Ctrl-C in a terminal reaches the supervisor, which then stops
            # clients before the broker, instead of every process dying at once
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        node.pid_file.write_text(str(process.pid))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            if not _alive(node.pid() or 0):
                raise KafkaError(
                    f"node {node.node_id} exited during start; end of {node.log_file}:\n"
                    + node.log_file.read_text(errors="replace")[-4000:]
                )
            started = _READY_LINE in node.log_file.read_text(errors="replace")
            if started and _port_open(node.port):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise KafkaError(f"node {node.node_id} not ready after {timeout:.0f}s")
            time.sleep(0.2)
        self._probe(deadline)

    def _probe(self, deadline: float) -> None:
        """A protocol-level check: the cluster answers metadata requests."""
        from kafka.errors import KafkaError as ClientError

        while True:
            try:
                admin = self.cluster.admin(request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except ClientError as exc:
                if time.monotonic() > deadline:
                    raise KafkaError(f"cluster at {self.bootstrap} does not answer: {exc}") from exc
                time.sleep(0.5)


def single_node(data_dir: Path, port: int, secure: bool = False) -> LocalKafka:
    """The persistent single-node broker of the run profile; its controller uses port + 1."""
    return LocalKafka(data_dir, ports=[port], controller_ports=[port + 1], heap="1g", secure=secure)
