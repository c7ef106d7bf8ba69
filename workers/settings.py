"""Settings of a worker process: the one source of the ``worker`` command's flags.

:func:`eeszt_gw.config.add_settings` makes a flag of every field (``--threads``, env
``EESZT_THREADS``) and :func:`eeszt_gw.config.load` builds the settings from the flags, the
``EESZT_*`` environment, the ``--config`` file and the defaults. Built once in ``main()`` and
passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from eeszt_gw.config import BrokerSettings

#: /metrics of the worker process in supervisor slot 0; slot i listens on this + i (up to 64
#: processes: 12100-12163). Prometheus's exporter range 9100-9999 is fully allocated on its
#: "default port allocations" list (9100 is node_exporter, 9101 the HAProxy exporter), 9464 is the
#: OpenTelemetry Prometheus exporter's default, and 10000-10300 holds Webmin, Zabbix and the
#: kubelet; 12100-12163 is none of those and lies below every ephemeral port range (Linux 32768+,
#: Windows 49152+). The card bridge takes 12099, just below (card_bridge/settings.py).
DEFAULT_METRICS_PORT = 12100

QUEUE_CLASS_NAMES = ("interactive", "batch")


def _queue_classes(queues: str) -> list[str]:
    """The queue classes of ``--queues``. Raises ValueError naming an unknown one."""
    classes = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in classes if q not in QUEUE_CLASS_NAMES]
    if unknown or not classes:
        named = ", ".join(map(repr, unknown)) if unknown else repr(queues)
        raise ValueError(f"unknown queue class {named}; use interactive, batch or "
                         "interactive,batch")
    return classes


class WorkerSettings(BrokerSettings):
    """A worker pool: the broker (:class:`BrokerSettings`), EESZT, the pool and its checks."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="ignore")

    queue_type: Literal["classic", "quorum"] = Field(
        default="classic",
        description="type of the durable queues the gateway declares (schemas.wire."
                    "queue_arguments): classic, or quorum on a RabbitMQ cluster; every worker and "
                    "producer of a vhost must use the same, RabbitMQ refuses a queue redeclared "
                    "with another")
    eeszt_url: str = Field(default="https://localhost:8443", description="EESZT base URL")
    pki_dir: Path = Field(default=Path("pki"),
                          description="folder with access.pem/.key (mutual TLS), server-ca.pem, "
                                      "institution.pem/.key (signing)")
    processes: int = Field(default=2, ge=1, le=64,
                           description="worker processes; a dead one is restarted")
    threads: int = Field(default=16, ge=1, le=512,
                         description="threads per process; in flight per process, so it hides "
                                     "EESZT's latency")
    queues: str = Field(default="interactive,batch",
                        description="queue classes to serve: interactive, batch, or "
                                    "interactive,batch")
    connect_timeout_s: float = Field(default=5.0, gt=0,
                                     description="TCP+TLS connect timeout to EESZT")
    max_handshakes: int = Field(default=4, ge=1, le=256, description="new TLS connections to "
                                "EESZT a process opens at a time; the rest wait their turn, so a "
                                "cold start does not time out")
    warm_connections: int | None = Field(
        default=None, ge=0, le=512, description="TLS connections to EESZT a process opens at "
        "start, paced by --max-handshakes, before it consumes; one that fails is left to the "
        "first request (default: one per thread; 0: none, each opens on first use)")
    read_timeout_s: float = Field(default=30.0, gt=0, description="answer timeout per call")
    transport: Literal["curl", "urllib3"] = Field(
        default="curl", description="HTTP client to EESZT: curl (libcurl through pycurl, "
        "workers/client/curl_transport.py: about a third of urllib3's CPU per request) or "
        "urllib3 (workers/client/transport.py)")
    call_attempts: int = Field(default=3, ge=1, le=10,
                               description="tries inside one call for a transient error")
    retry_base_s: float = Field(default=1.0, gt=0, description="first broker-side retry delay; "
                                "doubles each time, with jitter")
    retry_cap_s: float = Field(default=3600.0, gt=0,
                               description="longest broker-side retry delay")
    token_refresh_ratio: float = Field(
        default=0.8, gt=0, lt=1, description="refresh a SAML token after this share of its "
        "lifetime")
    token_key: SecretStr | None = Field(
        default=None,
        description="base64 32-byte key that encrypts the tokens the worker processes share; "
                    "prefer the environment variable, a flag is visible in ps (default: the "
                    "supervisor makes one for its own children)")
    interactive_logins: bool = Field(
        default=True, description="log doctors in at their workstation, through its card bridge "
                                  "(eSZIG card, or a MobilToken code typed there); off: doctors' "
                                  "requests are rejected with GW-LOGIN. The gateway holds no "
                                  "doctor's password, MobilToken secret or one-time code")
    bridge_users: bool = Field(
        default=False, description="accept a doctor's login answer only from the workstation's "
                                   "own broker user bridge-<WS> (deploy/rabbitmq/add-bridge-user); "
                                   "off (a shared development user): the answer's workstation "
                                   "must be the one the challenge went to, and an answer from a "
                                   "bridge-<WS> user is still checked against it")
    challenge_key: Path | None = Field(
        default=None, description="Ed25519 key that signs card login challenges (default: "
                                  "PKI_DIR/challenge.key)")
    login_window_s: float = Field(default=120.0, gt=0,
                                  description="how long a doctor has to complete a card or "
                                              "MobilToken login before the HIS is told")
    challenge_ttl_s: float = Field(default=120.0, gt=0,
                                   description="lifetime of one login challenge")
    breaker_failures: int = Field(default=5, ge=1, description="transient failures in a row "
                                  "(each after its in-call retries) that open a service's "
                                  "circuit: its requests are then parked in the broker")
    probe_interval_s: float = Field(default=10.0, gt=0, description="while a circuit is open, one "
                                    "probe per this many seconds per worker process")
    release_rate: float = Field(default=20.0, gt=0, description="parked requests moved back per "
                                "second once the service answers again")
    tenants: Literal["off", "his-users", "strict"] = Field(
        default="his-users",
        description="whose reply_to a request may name (workers/tenants.py). his-users: a request "
                    "published by broker user his-NAME (its user_id, which RabbitMQ validates) "
                    "must have reply_to his.NAME or his.NAME.*, or it goes to eeszt.dlq (code "
                    "GW-TENANT) and HIS NAME gets a rejected reply on his.NAME; requests without "
                    "a user_id pass. strict: the same, and a request without a user_id is refused "
                    "too (every HIS must set it; other users, such as this worker's own and "
                    "operators', are trusted). off: no check")
    republish_delay_s: float = Field(
        default=60.0, ge=0, description="a copy that a publisher sent again after a lost confirm "
        "waits this long, so that its twin (delivered first) has finished, then EESZT is asked "
        "before it is sent")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT, ge=0, le=65535,
        description="Prometheus /metrics port of the first worker process; the process in slot i "
                    "of --processes listens on this port + i, so N processes use N consecutive "
                    "ports; 0 disables metrics")
    metrics_host: str = Field(default="127.0.0.1",
                              description="address the /metrics endpoints listen on; 0.0.0.0 in "
                                          "a container or Kubernetes pod, so that Prometheus can "
                                          "scrape it")
    ocsp_url: str | None = Field(
        default=None, description="OCSP responder asked about institution.pem and access.pem at "
        "start and every --cert-check-interval-s; an unreachable responder makes the status "
        "unknown, never stops the worker (default: the URL in each certificate's Authority "
        "Information Access)")
    ocsp_timeout_s: float = Field(default=5.0, gt=0, description="timeout of one OCSP call")
    cert_check_interval_s: float = Field(
        default=3600.0, gt=0, description="seconds between OCSP checks of the worker's "
        "certificates; the first is at start")
    heartbeat_dir: Path = Field(default=Path("/tmp/eeszt-gw-worker"),
                                description="where worker processes write their heartbeats, "
                                            "which --check reads")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level of the worker processes")

    @field_validator("queues")
    @classmethod
    def _known_queue_classes(cls, value: str) -> str:
        try:
            _queue_classes(value)
        except ValueError as exc:
            raise PydanticCustomError("queue_class", str(exc)) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # EESZT_LOG_LEVEL=INFO

    def queue_classes(self) -> list[str]:
        """The queue classes this pool serves (``--queues``, checked when the settings load)."""
        return _queue_classes(self.queues)
