"""The ``demo`` command: its flags; the demo itself is :mod:`eeszt_gw.demo`, imported when it runs."""

from __future__ import annotations

import argparse


# --- demo ---------------------------------------------------------------------------------------
def _demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(prescriptions=ns.prescriptions, referrals=ns.referrals, profiles=ns.profiles,
                    revokes=ns.revokes, events=ns.events, documents=ns.documents,
                    invalid=ns.invalid, doctors=ns.doctors, threads=ns.threads,
                    latency_ms=ns.latency_ms, broker_url=ns.broker, seed=ns.seed,
                    timeout_s=ns.timeout_s)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the whole gateway in one process on an embedded broker",
        description=(
            "Run the gateway end to end in one process: a temporary test PKI, the EESZT simulator "
            "on a loopback port (HTTPS, mutual TLS, WS-Security, STS), the worker pool on an "
            "embedded in-memory broker (or on RabbitMQ with --broker), and a synthetic HIS that "
            "publishes a realistic mix and follows its replies. Ends with a table per service."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prescriptions", type=int, default=300, help="eRecept submissions")
    p.add_argument("--revokes", type=int, default=0, help="eRecept revocations of earlier ones")
    p.add_argument("--referrals", type=int, default=150, help="eBeutaló submissions")
    p.add_argument("--profiles", type=int, default=50, help="eProfil updates")
    p.add_argument("--events", type=int, default=500,
                   help="care events; each is a start and an end message")
    p.add_argument("--documents", type=int, default=100, help="EHR documents")
    p.add_argument("--invalid", type=int, default=8,
                   help="requests that pass local validation but are refused (each names a field)")
    p.add_argument("--doctors", type=int, default=10, help="distinct doctors")
    p.add_argument("--threads", type=int, default=16, help="worker threads")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulated EESZT latency")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="run against RabbitMQ (amqp://...) instead of the embedded broker")
    p.add_argument("--seed", type=int, default=7, help="random seed of the synthetic HIS")
    p.add_argument("--timeout-s", type=float, default=600, help="give up waiting for replies after this")
    p.set_defaults(func=_demo)


def register(sub) -> None:
    _add_demo(sub)
