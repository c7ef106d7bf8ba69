"""Settings of a worker process: flags first, then ``EESZT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from eeszt_gw.amqp import BrokerTLS

#: /metrics of the worker process in supervisor slot 0; slot i listens on this + i (up to 64
#: processes: 12100-12163). Prometheus's exporter range 9100-9999 is fully allocated on its
#: "default port allocations" list (9100 is node_exporter, 9101 the HAProxy exporter), 9464 is the
#: OpenTelemetry Prometheus exporter's default, and 10000-10300 holds Webmin, Zabbix and the
#: kubelet; 12100-12163 is none of those and lies below every ephemeral port range (Linux 32768+,
#: Windows 49152+). The card bridge takes 12099, just below (card_bridge/settings.py).
DEFAULT_METRICS_PORT = 12100


class WorkerSettings(BaseSettings):
    """Built once in ``main()`` and passed down; nothing reads the environment at import time."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="ignore")

    broker_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/%2F",
                            description="RabbitMQ URL (amqp:// or amqps://)")
    broker_ca: Path | None = Field(
        default=None, description="amqps://: CA file of the broker's certificate (default: the "
                                  "system's CAs); the certificate is always verified")
    broker_cert: Path | None = Field(
        default=None, description="amqps://: this client's certificate, for a broker that "
                                  "requires one")
    broker_key: Path | None = Field(default=None, description="amqps://: the key of broker_cert")
    queue_type: Literal["classic", "quorum"] = Field(
        default="classic",
        description="type of every durable queue the gateway declares (schemas.wire."
                    "queue_arguments): quorum on a RabbitMQ cluster; producers and every worker "
                    "must use the same, RabbitMQ refuses a queue redeclared with another")
    eeszt_url: str = Field(default="https://localhost:8443", description="EESZT base URL")
    pki_dir: Path = Field(default=Path("pki"),
                          description="folder with access.pem/key, server-ca.pem, institution.pem/key")
    processes: int = Field(default=2, ge=1, le=64)
    threads: int = Field(default=16, ge=1, le=512, description="worker threads per process")
    queues: str = Field(default="interactive,batch",
                        description="queue classes to consume: interactive, batch or both")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_handshakes: int = Field(default=4, ge=1, le=256, description="new TLS connections to "
                                "EESZT a process opens at a time (the others wait their turn)")
    warm_connections: int | None = Field(
        default=None, ge=0, le=512, description="TLS connections to EESZT a worker process "
        "opens at start, before it consumes (default: one per thread; 0: each opens on first use)")
    read_timeout_s: float = Field(default=30.0, gt=0)
    transport: Literal["urllib3", "curl"] = Field(
        default="curl", description="HTTP client to EESZT: urllib3 (workers/client/transport.py) "
        "or libcurl through pycurl (workers/client/curl_transport.py, less CPU per request)")
    call_attempts: int = Field(default=3, ge=1, le=10,
                               description="tries inside one call for a transient failure")
    retry_base_s: float = Field(default=1.0, gt=0, description="first broker-side retry delay")
    retry_cap_s: float = Field(default=3600.0, gt=0, description="longest broker-side retry delay")
    token_refresh_ratio: float = Field(default=0.8, gt=0, lt=1,
                                       description="refresh a token after this share of its lifetime")
    token_key: SecretStr | None = Field(
        default=None,
        description="base64 32-byte key that encrypts tokens shared between worker processes; "
                    "the supervisor makes one for its own children when unset")
    interactive_logins: bool = Field(
        default=True, description="log doctors in at their workstation, through its card bridge "
                                  "(eSZIG card, or a MobilToken code typed there); off: doctors' "
                                  "requests are rejected with GW-LOGIN. The gateway holds no "
                                  "doctor's password, MobilToken secret or one-time code")
    bridge_users: bool = Field(
        default=False, description="accept a login answer only from the workstation's own broker "
                                   "user bridge-<WS> (deploy/rabbitmq/add-bridge-user); off (a "
                                   "shared development user): the answer's workstation must be "
                                   "the one the challenge went to, and an answer from a "
                                   "bridge-<WS> user is still checked against it")
    challenge_key: Path | None = Field(
        default=None, description="Ed25519 key that signs card challenges (default: PKI_DIR/challenge.key)")
    login_window_s: float = Field(default=120.0, gt=0,
                                  description="how long a doctor has to complete a login")
    challenge_ttl_s: float = Field(default=120.0, gt=0, description="lifetime of a card challenge")
    breaker_failures: int = Field(default=5, ge=1, description="transient failures in a row "
                                  "(each after its in-call retries) that open a service's circuit")
    probe_interval_s: float = Field(default=10.0, gt=0, description="while a circuit is open, one "
                                    "probe per this many seconds per worker process")
    release_rate: float = Field(default=20.0, gt=0, description="parked requests moved back per "
                                "second once a service answers again")
    tenants: Literal["off", "his-users", "strict"] = Field(
        default="his-users",
        description="whose reply_to a request may name (workers/tenants.py): a request "
                    "published by broker user his-NAME (its validated user_id) must reply to "
                    "his.NAME or his.NAME.*; strict also refuses requests without a user_id")
    republish_delay_s: float = Field(
        default=60.0, ge=0, description="a copy a publisher sent again after a lost confirm waits "
        "this long, so that its twin (delivered first) has finished, then EESZT is asked first")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT, ge=0, le=65535,
        description="Prometheus /metrics port of the first worker process; the process in "
                    "supervisor slot i listens on metrics_port + i; 0 disables the endpoint")
    metrics_host: str = Field(default="127.0.0.1",
                              description="address the /metrics endpoints listen on (0.0.0.0 "
                                          "in a container, so that Prometheus can scrape it)")
    ocsp_url: str | None = Field(
        default=None, description="OCSP responder asked about institution.pem and access.pem "
        "(default: the URL in each certificate's Authority Information Access)")
    ocsp_timeout_s: float = Field(default=5.0, gt=0, description="timeout of one OCSP call")
    cert_check_interval_s: float = Field(
        default=3600.0, gt=0, description="how often a worker process asks OCSP about its "
        "certificates (and once at start)")
    heartbeat_dir: Path = Field(default=Path("/tmp/eeszt-gw-worker"),
                                description="where worker processes write their heartbeat")
    log_level: str = "info"

    def broker_tls(self) -> BrokerTLS | None:
        """The broker TLS files, or None when none is set. Raises BrokerConfigError."""
        return BrokerTLS.from_paths(self.broker_ca, self.broker_cert, self.broker_key)

    def queue_classes(self) -> list[str]:
        classes = [q.strip() for q in self.queues.split(",") if q.strip()]
        unknown = [q for q in classes if q not in ("interactive", "batch")]
        if unknown or not classes:
            raise ValueError(f"queues: unknown queue class {unknown or classes!r}; "
                             "use interactive, batch or interactive,batch")
        return classes
