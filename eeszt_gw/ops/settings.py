"""The settings of the operators' commands: ``dlq`` and ``audit`` (:class:`OpsSettings`) and
``status`` (:class:`StatusSettings`). Their flags are generated from these classes
(:func:`eeszt_gw.config.add_settings`); what is asked of one run (``--json``, message ids,
filters, ``--why``) stays a plain flag of the command (:mod:`eeszt_gw.ops.cli`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from eeszt_gw.config import BrokerSettings


class OpsSettings(BrokerSettings):
    """What every operator command needs: the broker (``EESZT_BROKER_*``, as the workers').
    An empty environment variable counts as not set."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="ignore", env_ignore_empty=True)


class StatusSettings(OpsSettings):
    """``eeszt-gw status``: the broker, the PKI folder and the thresholds of the report."""

    pki_dir: Path = Field(
        default=Path("pki"),
        description="folder with access.pem, institution.pem, server-ca.pem, sts.pem, "
                    "challenge.pem, whose expiry is checked, and the CAs' CRLs (*.crl) that "
                    "tell which are revoked; the same folder as the workers'")
    wait_s: float = Field(default=1.5, gt=0,
                          description="how long to wait for the worker processes' answers")
    time_limit_s: float = Field(
        default=600.0, gt=0, description="a request in flight longer than this is flagged "
        "(the workers' dramatiq TimeLimit is 10 min)")
    cert_warn_days: float = Field(default=30.0, ge=0,
                                  description="flag certificates that expire within this many days")
    browse_cap: int = Field(
        default=10_000, ge=1, description="messages looked at per queue for the per-service "
        "breakdown and ages; the output says when it cut a breakdown short")
    rabbitmqctl: bool = Field(
        default=True, description="ask rabbitmqctl, when it works on this host for a local "
        "broker, for the doctors' wait queues and the cluster (each node, and the replicated "
        "queues that lost their leader or a replica); off: use the workers' answers")
    rabbitmq_node: str | None = Field(
        default=None, description="the RabbitMQ node rabbitmqctl asks, as its -n (default: "
        "this host's default node)")
