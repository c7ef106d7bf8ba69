"""Assembling one worker process: client, token manager, outbox, pipeline, broker, actors.

Everything is built from a :class:`~workers.settings.WorkerSettings` passed in; the seams
(broker, outbox, token share, EESZT client) can be swapped for in-memory ones, which is how the
embedded demo and the unit tests run without RabbitMQ.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pathlib import Path

import dramatiq
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from eeszt_gw.amqp import BROKER_CONNECTION_LOST

from .actors import SERVICE_ACTORS, register_actors
from .breaker import Breakers
from .broker import consumer_alive
from .errors import ServiceRejected, ServiceUnavailable
from .client.client import ClientFiles, EesztClient
from .logins.coordinator import LoginBackend, LoginCoordinator
from .outbox import BrokerError, Outbox
from .outcomes import Observer
from .pipeline import Incoming, Pipeline, internal_error
from .retry import RetryPolicy
from .settings import WorkerSettings
from .logins.tokens import TokenManager, institution_identity
from .client.transport import Timeouts

log = logging.getLogger("eeszt_gw.worker")


def institution_of(cert_pem: bytes) -> str:
    """The institution id in a qualified institution certificate (organizationIdentifier)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    if not attrs:
        raise ValueError("the institution certificate carries no organizationIdentifier")
    return str(attrs[0].value)


@dataclass
class Runtime:
    broker: dramatiq.Broker
    pipeline: Pipeline
    client: Any
    tokens: TokenManager
    outbox: Outbox
    share: Any
    logins: LoginCoordinator | None = None
    breakers: Breakers | None = None

    def handle_login_event(self, body_b64: str, meta: dict[str, Any]) -> None:
        """The body of the login-events actor (card answers, window expiries, sweeps)."""
        if self.logins is None:
            return
        try:
            self.logins.on_event(base64.b64decode(body_b64), meta.get("headers") or {},
                                 user_id=meta.get("user_id"))
        except (BrokerError, *BROKER_CONNECTION_LOST):
            raise
        except Exception:  # a bad answer must not kill the worker
            log.exception("internal error on a login event")

    def handle(self, body_b64: str, meta: dict[str, Any]) -> None:
        """The body of every actor."""
        if not consumer_alive(meta.get("consumer")):
            log.info("skipped a message of a lost broker connection; it is redelivered")
            return
        msg = Incoming(body=base64.b64decode(body_b64), queue=meta["queue"],
                       message_type=meta.get("type"), redelivered=bool(meta.get("redelivered")),
                       headers=meta.get("headers") or {}, message_id=meta.get("message_id"),
                       user_id=meta.get("user_id"), exchange=meta.get("exchange"),
                       routing_key=meta.get("routing_key"))
        # A broker connection lost under the pipeline (its own broker operations say
        # BrokerError) is not answered as an internal error: the message comes back.
        try:
            self.pipeline.handle(msg)
        except (BrokerError, *BROKER_CONNECTION_LOST):
            raise  # not acknowledged: the request comes back once the broker takes publishes
        except Exception as exc:  # a bug must not kill the worker nor lose the message
            log.exception("internal error on message %s", msg.message_id)
            internal_error(self.pipeline, msg, exc)

    def close(self) -> None:
        if self.breakers is not None:
            self.breakers.stop()
        for part in (self.share, self.outbox, self.client):
            close = getattr(part, "close", None)
            if close:
                close()
        self.broker.close()


def load_challenge_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the challenge key must be an Ed25519 private key")
    return key


def build_runtime(settings: WorkerSettings, *, broker: dramatiq.Broker, outbox: Outbox,
                  share: Any = None, client: Any = None, observer: Observer | None = None,
                  login_backend: LoginBackend | None = None, audit: Any = None) -> Runtime:
    files = ClientFiles.from_pki_dir(settings.pki_dir)
    institution = institution_of(files.institution_cert.read_bytes())
    if client is None:
        client = EesztClient(base_url=settings.eeszt_url, files=files,
                             timeouts=Timeouts(connect=settings.connect_timeout_s,
                                               read=settings.read_timeout_s),
                             pool_size=max(8, settings.threads),
                             handshakes=settings.max_handshakes, transport=settings.transport)
    challenge_key_path = settings.challenge_key or settings.pki_dir / "challenge.key"
    interactive = (settings.interactive_logins and login_backend is not None
                   and challenge_key_path.exists())
    tokens = TokenManager(sts=client, share=share,
                          refresh_ratio=settings.token_refresh_ratio,
                          interactive_logins=interactive)
    logins = None
    if interactive:
        logins = LoginCoordinator(backend=login_backend, eeszt=client, tokens=tokens,
                                  outbox=outbox, challenge_key=load_challenge_key(challenge_key_path),
                                  institution=institution, challenge_ttl_s=settings.challenge_ttl_s,
                                  bridge_users=settings.bridge_users,
                                  # a GW-LOGIN rejection is audited and counted by the pipeline
                                  reject=lambda *args: pipeline._reject(*args))
    policy = RetryPolicy(call_attempts=settings.call_attempts, base_s=settings.retry_base_s,
                         cap_s=settings.retry_cap_s)
    queue_of = {a.name: a.queue for a in SERVICE_ACTORS}

    def probe(service: str) -> bool:
        """Any SOAP answer, even a refusal, means the service is back."""
        token = tokens.get(institution_identity(institution), reason="probe")
        try:
            client.query(service, "eeszt-gw-circuit-probe", token.assertion)
        except ServiceRejected:
            return True
        except ServiceUnavailable:
            return False
        return True

    def release(service: str) -> None:
        threading.Thread(target=outbox.release_parked, args=(service, queue_of[service]),
                         kwargs={"rate_per_s": settings.release_rate},
                         name=f"release-{service}", daemon=True).start()

    breakers = Breakers(failure_threshold=settings.breaker_failures,
                        probe_interval_s=settings.probe_interval_s, probe=probe,
                        on_close=release).start()
    pipeline = Pipeline(client=client, tokens=tokens, outbox=outbox, institution=institution,
                        policy=policy, observer=observer, logins=logins, breakers=breakers,
                        republish_delay_s=settings.republish_delay_s, audit=audit,
                        tenants=settings.tenants)
    runtime = Runtime(broker=broker, pipeline=pipeline, client=client, tokens=tokens,
                      outbox=outbox, share=share, logins=logins, breakers=breakers)
    register_actors(broker, runtime.handle, runtime.handle_login_event)
    return runtime
