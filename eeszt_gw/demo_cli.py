"""The ``demo`` command: its settings and flags; the demo itself is :mod:`eeszt_gw.demo`,
imported when it runs."""

from __future__ import annotations

import argparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DemoSettings(BaseSettings):
    """One run of the demo: the synthetic HIS's mix, the simulator's latency, the worker pool."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="ignore")

    prescriptions: int = Field(default=300, ge=0, description="eRecept submissions")
    revokes: int = Field(default=0, ge=0, description="eRecept revocations of earlier ones")
    referrals: int = Field(default=150, ge=0, description="eBeutaló submissions")
    profiles: int = Field(default=50, ge=0, description="eProfil updates")
    events: int = Field(default=500, ge=0,
                        description="care events; each is a start and an end message")
    documents: int = Field(default=100, ge=0, description="EHR documents")
    invalid: int = Field(default=8, ge=0, description="requests that pass local validation but "
                                                      "are refused (each names a field)")
    doctors: int = Field(default=10, ge=1, description="distinct doctors")
    threads: int = Field(default=16, ge=1, le=512, description="worker threads")
    latency_ms: float = Field(default=20.0, ge=0, description="simulated EESZT latency")
    broker_url: str | None = Field(
        default=None, description="RabbitMQ URL to run on instead of the embedded in-memory "
        "broker (default: the embedded broker)")
    seed: int = Field(default=7, description="random seed of the synthetic HIS")
    timeout_s: float = Field(default=600.0, gt=0,
                             description="give up waiting for replies after this")


def _demo(s: DemoSettings, ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(prescriptions=s.prescriptions, referrals=s.referrals, profiles=s.profiles,
                    revokes=s.revokes, events=s.events, documents=s.documents,
                    invalid=s.invalid, doctors=s.doctors, threads=s.threads,
                    latency_ms=s.latency_ms, broker_url=s.broker_url, seed=s.seed,
                    timeout_s=s.timeout_s)


def register(sub) -> None:
    from .config import add_command

    add_command(
        sub, "demo", DemoSettings, _demo,
        help="run the whole gateway in one process on an embedded broker",
        description=(
            "Run the gateway end to end in one process: a temporary test PKI, the EESZT simulator "
            "on a loopback port (HTTPS, mutual TLS, WS-Security, STS), the worker pool on an "
            "embedded in-memory broker (or on RabbitMQ with --broker-url), and a synthetic HIS "
            "that publishes a realistic mix and follows its replies. Ends with a table per "
            "service."))
