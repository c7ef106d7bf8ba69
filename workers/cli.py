"""The ``worker`` command: flags generated from :class:`workers.settings.WorkerSettings`."""

from __future__ import annotations

import argparse


def _worker(settings, ns: argparse.Namespace) -> int:
    from workers.process import check, supervise

    if ns.check:
        return check(settings)
    settings.checked_broker_tls()
    return supervise(settings)


def register(sub) -> None:
    from eeszt_gw.config import add_command
    from workers.settings import WorkerSettings

    p = add_command(
        sub, "worker", WorkerSettings, _worker,
        help="run the worker pool (consumes RabbitMQ, submits to EESZT)",
        description=(
            "Run a pool of worker processes. Each consumes the gateway's queues on RabbitMQ, "
            "gets SAML tokens from the STS, signs each request with WS-Security and submits it "
            "over mutual TLS, then replies to the HIS. Interactive work (eRecept, eBeutaló, "
            "eProfil) and batch work (events, EHR) have their own queues; --queues picks which "
            "this pool serves. A dead process is restarted."))
    p.add_argument("--check", action="store_true",
                   help="health probe: exit 0 if a worker process beat within 30 s, else 1")
