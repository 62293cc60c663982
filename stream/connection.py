"""One Kafka connection config for every client of the project, and the clients made from it.

Every Kafka client Currents opens (Faust's aiokafka consumer and producer, kafka-python admin
clients, consumers and producers, the aiokafka item-vectors consumer, confluent-kafka in the
benchmarks) is made here, from one `KafkaSecurity`: a client made anywhere else would connect
without the cluster's credentials (tests/test_layout.py fails on one). The clients are
imported where they are made, so importing this module costs nothing.

Security protocols PLAINTEXT, SSL, SASL_PLAINTEXT and SASL_SSL; SASL PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512; a CA file (else the system's CAs, as managed clusters use public ones), an
optional client certificate and key (mutual TLS); the broker's host name is checked against its
certificate unless `ssl_check_hostname` is switched off.
"""

import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["BrokerUnreachable", "Cluster", "ConnectionFailed", "KafkaSecurity"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class _NoConfigurationDump(logging.Filter):
    """kafka-python's admin client logs its whole configuration, SASL password included, at
    DEBUG: that line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Starting KafkaAdminClient with configuration")


logging.getLogger("kafka.admin.client").addFilter(_NoConfigurationDump())


class ConnectionFailed(Exception):
    """The cluster cannot be reached or refused this client; the message says why in one line
    and never holds a secret."""


class BrokerUnreachable(ConnectionFailed):
    """No bootstrap server answered at all (connection refused, no route, timed out), as
    during a broker restart: an outage, worth waiting out. A server that answers but refuses
    this client (TLS, SASL, protocol) raises ConnectionFailed itself: waiting will not help.
    A broker caught closing its connections as it stops counts as refusing (exit 1, which a
    supervisor restarts as well)."""


class KafkaSecurity(BaseModel):
    """How clients authenticate to the cluster and check it is the right one.

    Set with `CURRENTS_KAFKA_<FIELD>` variables (stream/settings.py), secrets also from files
    (`CURRENTS_KAFKA_SASL_PASSWORD_FILE`). Secrets are `SecretStr`: they print as stars.
    """

    # extra="ignore": CURRENTS_KAFKA_HOME (the broker jars' cache) shares the prefix
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: SaslMechanism = Field(
        default="PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user (SASL_* only).")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; or a file: CURRENTS_KAFKA_SASL_PASSWORD_FILE."
    )
    ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle the broker's certificate must chain to; "
        "default: the system's CAs.",
    )  # fmt: skip
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (mutual TLS); needs ssl_keyfile."
    )
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile.")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted ssl_keyfile."
    )
    ssl_check_hostname: bool = Field(
        default=True,
        description="Check the broker's host name against its certificate; switch off only "
        "for a broker whose certificate does not name the address clients use.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaSecurity":
        """Refuse settings that would be silently ignored: a half-configured client is one that
        connects without the protection its operator meant to give it."""
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        if not self.sasl and (self.sasl_username or self.sasl_password):
            raise ValueError(
                f"a SASL user is set, but security_protocol is {self.security_protocol}"
            )
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password)
        if not self.tls and any(value is not None for value in tls_files):
            raise ValueError(
                f"TLS files are set, but security_protocol is {self.security_protocol}"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("a client certificate needs both ssl_certfile and ssl_keyfile")
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every Python client; None without TLS. Raises ConnectionFailed
        when a CA, certificate or key file cannot be read."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=None if self.ssl_cafile is None else str(self.ssl_cafile)
            )
            context.check_hostname = self.ssl_check_hostname
            if self.ssl_certfile is not None:
                password = self.ssl_key_password
                context.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile),
                    None if password is None else password.get_secret_value(),
                )  # fmt: skip
        except (OSError, ssl.SSLError) as error:
            files = f"{self.ssl_cafile or ''} {self.ssl_certfile or ''} {self.ssl_keyfile or ''}"
            raise ConnectionFailed(
                f"cannot load the TLS files ({' '.join(files.split())}): "
                f"{getattr(error, 'strerror', None) or error.__class__.__name__}"
            ) from None
        return context

    def kafka_python(self) -> dict:
        """kafka-python's and aiokafka's options (the same names)."""
        options: dict = {"security_protocol": self.security_protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options

    def librdkafka(self) -> dict:
        """confluent-kafka's (librdkafka's) options."""
        options = {"security.protocol": self.security_protocol.lower()}
        if self.tls:
            options["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
            files = {
                "ssl.ca.location": self.ssl_cafile,
                "ssl.certificate.location": self.ssl_certfile,
                "ssl.key.location": self.ssl_keyfile,
            }
            options.update({key: str(path) for key, path in files.items() if path is not None})
            if self.ssl_key_password is not None:
                options["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.sasl:
            options.update({
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password.get_secret_value(),
            })  # fmt: skip
        return options

    def faust_credentials(self):
        """Faust's `broker_credentials` (None for PLAINTEXT): its consumer, producer and the
        admin requests it makes all take them."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """What a one-line error says about how the client connected (never the secret)."""
        if self.sasl:
            return f"{self.security_protocol}, {self.sasl_mechanism} user {self.sasl_username!r}"
        return self.security_protocol


@dataclass(frozen=True)
class Cluster:
    """Where the cluster is and how to connect to it: the only maker of Kafka clients."""

    bootstrap: str
    security: KafkaSecurity = KafkaSecurity()

    def check(self, timeout: float = 10.0) -> None:
        """Raise ConnectionFailed, naming the cause in one line, unless a bootstrap server
        accepts this client (TLS, SASL and a metadata request); BrokerUnreachable when none
        answered at all, which the worker waits out. Clients themselves retry a refused
        connection for their whole timeout and then report only that they could not
        bootstrap: commands call this first, to fail fast with the reason."""
        import asyncio

        from stream.faust_compat import probe_broker

        try:
            options = self.security.kafka_python()
        except ConnectionFailed as error:
            raise ConnectionFailed(f"cannot connect to Kafka: {error}") from None
        servers = [server.strip() for server in self.bootstrap.split(",")]

        async def first_accepting() -> dict[str, BaseException]:
            """All servers at once, so the whole check takes at most `timeout`: {} as soon
            as one accepts, else each server's error."""
            probes = {
                asyncio.ensure_future(
                    probe_broker(server.rpartition(":")[0], int(server.rpartition(":")[2]),
                                 options, timeout)
                ): server
                for server in servers
            }  # fmt: skip
            errors = {}
            while probes:
                done, _ = await asyncio.wait(probes, return_when=asyncio.FIRST_COMPLETED)
                for probe in done:
                    server = probes.pop(probe)
                    if probe.exception() is None:
                        for other in probes:
                            other.cancel()
                        await asyncio.gather(*probes, return_exceptions=True)
                        return {}
                    errors[server] = probe.exception()
            return errors

        errors = asyncio.run(first_accepting())
        if errors:
            listed = "; ".join(f"{s}: {self._reason(errors[s], timeout)}" for s in servers)
            unreachable = all(_unreachable(error) for error in errors.values())
            raise (BrokerUnreachable if unreachable else ConnectionFailed)(
                f"cannot connect to Kafka ({self.security.describe()}): {listed}"
            )

    def _reason(self, error: BaseException, timeout: float) -> str:
        from aiokafka.errors import (
            KafkaConnectionError,
            SaslAuthenticationFailed,
            UnsupportedSaslMechanismError,
        )

        security = self.security
        if isinstance(error, SaslAuthenticationFailed):
            return "authentication failed: wrong password or unknown user"
        if isinstance(error, UnsupportedSaslMechanismError):
            return f"the broker does not accept SASL mechanism {security.sasl_mechanism}"
        if isinstance(error, ssl.SSLCertVerificationError):
            trusted = security.ssl_cafile or "the system's CAs"
            return f"the broker's certificate is not trusted ({trusted}): {error.verify_message}"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed ({error.reason}): is this a TLS listener?"
        if isinstance(error, KafkaConnectionError):
            return (
                f"the broker closed the connection: it expects another security protocol "
                f"than {security.security_protocol}"
            )
        if isinstance(error, TimeoutError):
            return f"no answer within {timeout:.0f} s"
        if isinstance(error, OSError):
            return error.strerror or error.__class__.__name__
        return error.__class__.__name__

    def admin(self, **options):
        from kafka import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, **self.security.kafka_python(), **options
        )

    def consumer(self, *topics: str, **options):
        from kafka import KafkaConsumer

        return KafkaConsumer(
            *topics, bootstrap_servers=self.bootstrap, **self.security.kafka_python(), **options
        )

    def producer(self, **options):
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.bootstrap, **self.security.kafka_python(), **options
        )

    def aio_consumer(self, *topics: str, **options):
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            *topics, bootstrap_servers=self.bootstrap, **self.security.kafka_python(), **options
        )

    def confluent_consumer(self, **options):
        """A librdkafka consumer; `options` in librdkafka's dotted names."""
        from confluent_kafka import Consumer

        return Consumer(
            {"bootstrap.servers": self.bootstrap, **self.security.librdkafka(), **options}
        )

    def confluent_producer(self, **options):
        """A librdkafka producer; `options` in librdkafka's dotted names."""
        from confluent_kafka import Producer

        return Producer(
            {"bootstrap.servers": self.bootstrap, **self.security.librdkafka(), **options}
        )


def _unreachable(error: BaseException) -> bool:
    """Whether a probe's error means nothing answered (refused, no route, no name, silence),
    rather than a server that answered and refused this client: a plain listener resets a
    TLS handshake, which must fail fast, so only these errors count."""
    if isinstance(error, (ConnectionRefusedError, TimeoutError, socket.gaierror)):
        return True
    return isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
