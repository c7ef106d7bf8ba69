"""The naive peer: what a typical integrator writes for the same job, run by dramatiq's own CLI.

``dramatiq benchmarks.naive --processes P --threads 8 --queues naive.events``

- a dramatiq actor on a ``RabbitmqBroker`` (dramatiq's defaults: its own message format, its
  own queue, default middleware, prefetch = threads × 2, no publisher confirms);
- one zeep ``Client`` per process, loaded from ``schemas/soap/esemenyKatalogus.wsdl``, shared
  by the threads;
- WS-Security with zeep's ``BinarySignature`` and the SHA-256 algorithms passed in. zeep has no
  ``wsu:Timestamp`` and no SAML support, so a small zeep ``Plugin`` adds both to the Security
  header on egress; plugins run before zeep's WS-Security, so the Timestamp gets signed;
- zeep verifies responses with the client's own certificate and refuses unsigned ones, so
  ``verify`` is switched off, the usual workaround;
- a ``requests.Session`` transport with the client certificate, ``verify=`` the server CA and
  ``trust_env = False`` (``REQUESTS_CA_BUNDLE`` would otherwise win over ``session.verify``);
- one SAML token from the STS per process, at worker boot.

Nothing here is slowed down on purpose: it is the peer, not a strawman. The one addition for the
benchmark is a worker-boot hook that builds the client and writes ``NAIVE_READY_DIR/ready-<pid>``
before the first message, so that start-up stays out of the measured window.

Configuration (environment): ``NAIVE_BROKER_URL``, ``NAIVE_EESZT_URL``, ``NAIVE_PKI_DIR``,
``NAIVE_READY_DIR`` (optional).
"""

from __future__ import annotations

import copy
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

from benchmarks.harness import NAIVE_ACTOR, NAIVE_QUEUE, ROOT

WSDL = ROOT / "schemas" / "soap" / "esemenyKatalogus.wsdl"
_state: dict[str, object] = {}
_lock = threading.Lock()


def _client():
    """The process's zeep service proxy (built once, at worker boot)."""
    with _lock:
        if "service" in _state:
            return _state["service"]
        import requests
        import xmlsec
        import zeep
        from lxml import etree
        from zeep.plugins import Plugin
        from zeep.transports import Transport
        from zeep.wsse.signature import BinarySignature
        from zeep.wsse.utils import WSU, get_security_header

        from workers.client.client import ClientFiles, EesztClient

        pki = Path(os.environ.get("NAIVE_PKI_DIR", "pki"))
        url = os.environ.get("NAIVE_EESZT_URL", "https://localhost:8443").rstrip("/")
        files = ClientFiles.from_pki_dir(pki)
        sts = EesztClient(base_url=url, files=files)
        try:
            assertion = sts.issue_token(method="x509").assertion
        finally:
            sts.close()

        class SecurityExtras(Plugin):
            """Adds the wsu:Timestamp and the SAML assertion zeep cannot add itself."""

            def egress(self, envelope, http_headers, operation, binding_options):
                security = get_security_header(envelope)
                now = datetime.now(timezone.utc)
                fmt = "%Y-%m-%dT%H:%M:%SZ"
                security.append(WSU.Timestamp(WSU.Created(now.strftime(fmt)),
                                              WSU.Expires((now + timedelta(minutes=5)).strftime(fmt))))
                security.append(copy.deepcopy(assertion))
                return envelope, http_headers

        class SignOnly(BinarySignature):
            """zeep would verify the answer with our own certificate: skip it."""

            def verify(self, envelope):
                return envelope

        session = requests.Session()
        session.trust_env = False
        session.verify = str(files.server_ca)
        session.cert = (str(files.access_cert), str(files.access_key))
        client = zeep.Client(
            str(WSDL), transport=Transport(session=session, timeout=30, operation_timeout=30),
            wsse=SignOnly(str(files.institution_key), str(files.institution_cert),
                          signature_method=xmlsec.constants.TransformRsaSha256,
                          digest_method=xmlsec.constants.TransformSha256),
            plugins=[SecurityExtras()])
        service = client.create_service(
            "{urn:eeszt-gateway:contract:v1:esemenykatalogus}esemenyKatalogusBinding",
            f"{url}/services/esemenyKatalogus")
        _state["service"] = service
        _state["etree"] = etree
        return service


class _BootReady(Middleware):
    """Build the client before the first message, then say so (benchmark only)."""

    def after_worker_boot(self, broker, worker):
        _client()
        ready = os.environ.get("NAIVE_READY_DIR")
        if ready:
            Path(ready, f"ready-{os.getpid()}").touch()


broker = RabbitmqBroker(url=os.environ.get("NAIVE_BROKER_URL",
                                           "amqp://guest:guest@127.0.0.1:5672/%2F"))
broker.add_middleware(_BootReady())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=NAIVE_ACTOR, queue_name=NAIVE_QUEUE, max_retries=3)
def submit_event(event: dict) -> None:
    """Send one care-event start to the esemenyKatalogus service."""
    p = event["payload"]
    result = _client().esemenyKezdet(
        header={"idempotencyKey": event["idempotency_key"], "messageId": event["message_id"],
                "institution": event["institution"], "createdAt": event["created_at"]},
        taj=p["taj"], eventId=p["event_id"], eventType=p["event_type"],
        startedAt=p["started_at"], bno=p.get("bno"))
    if not result or not result.eesztId:
        raise RuntimeError("no eesztId in the answer")
