"""The TLS side of the connection config, against a TLS server on 127.0.0.1."""

import socket
import ssl
import threading
import time

import pytest

from stream.connection import BrokerUnreachable, Cluster, ConnectionFailed, KafkaSecurity
from stream.local_kafka import make_certificates


@pytest.fixture()
def tls_server(tmp_path):
    """A TLS server whose certificate names another host than 127.0.0.1; it closes every
    connection after the handshake. Yields (port, its CA file)."""
    ca = make_certificates(tmp_path, hosts=("broker.example",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "broker.crt", tmp_path / "broker.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], ca
    stop.set()
    thread.join()
    listener.close()


def test_the_host_name_is_checked_unless_switched_off(tls_server):
    port, ca = tls_server
    checked = KafkaSecurity(security_protocol="SSL", ssl_cafile=ca)
    with pytest.raises(
        ConnectionFailed, match="address mismatch, certificate is not valid for .127.0.0.1"
    ):
        Cluster(f"127.0.0.1:{port}", checked).check(timeout=5)
    unchecked = checked.model_copy(update={"ssl_check_hostname": False})
    # the handshake passes; this server then closes, as a broker of another protocol would
    with pytest.raises(ConnectionFailed, match="closed the connection") as refused:
        Cluster(f"127.0.0.1:{port}", unchecked).check(timeout=5)
    assert not isinstance(refused.value, BrokerUnreachable)  # a refusal is not waited out
    assert unchecked.librdkafka()["ssl.endpoint.identification.algorithm"] == "none"
    assert checked.librdkafka()["ssl.ca.location"] == str(ca)


def test_a_plain_listener_resetting_a_tls_handshake_is_a_refusal_not_an_outage():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, then closes: not TLS
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                listener.accept()[0].close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        with pytest.raises(ConnectionFailed) as refused:
            Cluster(f"127.0.0.1:{port}", KafkaSecurity(security_protocol="SSL")).check(timeout=5)
        assert not isinstance(refused.value, BrokerUnreachable)
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_missing_tls_file_is_named_in_one_line(tmp_path):
    security = KafkaSecurity(security_protocol="SSL", ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ConnectionFailed, match=r"cannot load the TLS files \(.*nope.pem\)"):
        Cluster("127.0.0.1:1", security).check(timeout=1)


def test_nothing_listening_is_named_per_server_as_an_outage():
    with pytest.raises(BrokerUnreachable, match=r"127.0.0.1:1: .*; 127.0.0.1:2: "):
        Cluster("127.0.0.1:1,127.0.0.1:2").check(timeout=2)


def test_silent_servers_are_probed_together_within_the_timeout():
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]  # never accept
    servers = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in silent)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnreachable, match="no answer within 2 s.*no answer within 2 s"):
            Cluster(servers).check(timeout=2)
    finally:
        for server in silent:
            server.close()
    assert time.monotonic() - started < 4  # not 3 x 2 s
