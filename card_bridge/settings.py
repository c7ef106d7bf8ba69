"""Settings of a card bridge: the ``card-bridge`` command's flags and ``EESZT_*`` environment
variables are generated from :class:`BridgeSettings` (:mod:`eeszt_gw.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from eeszt_gw.config import DEFAULT_BROKER_URL, BrokerSettings

#: /metrics of the card bridge: just below the workers' 12100 + slot (workers/settings.py says
#: why not 9100-9999), so a demo host running both has no clash.
DEFAULT_METRICS_PORT = 12099


class BridgeSettings(BrokerSettings):
    """One workstation's card bridge."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="forbid")

    workstation: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                             description="this workstation's id, as HIS requests name it")
    broker_url: str = Field(default=DEFAULT_BROKER_URL,
                            description="RabbitMQ URL; in production a user that may read only "
                                        "this workstation's queue; amqps:// for TLS")
    pinned_challenge_key: Path = Field(
        default=Path("pki/challenge.pem"),
        description="the gateway's challenge public key or certificate (PEM, Ed25519), pinned: "
        "the bridge answers only challenges signed by its private half")
    eid_url: str = Field(default="https://localhost:8445", description="the eID server")
    eid_ca: Path | None = Field(default=Path("pki/server-ca.pem"),
                                description="CA file of the eID server's certificate")
    eid_timeout_s: float = Field(default=10.0, gt=0,
                                 description="how long to wait to connect to the eID server, "
                                             "and for each of its answers")
    login_method: Literal["eszig", "mobiltoken"] = Field(
        default="eszig", description="how doctors log in at this workstation: eszig (eSZIG card "
        "and PIN) or mobiltoken (the doctor types the code of the MobilToken app; the bridge "
        "posts it straight to the eID server, never to the broker)")
    reader: str | None = Field(default=None, description="use the first PC/SC reader whose name "
                               "contains this (default: the first)")
    card_wait_s: float = Field(default=30.0, gt=0, description="how long to wait for a card")
    prompt_timeout_s: float = Field(default=120.0, gt=0,
                                    description="how long to wait for the PIN (or the "
                                                "MobilToken code)")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535,
                              description="Prometheus /metrics port on 127.0.0.1: logins by "
                                          "outcome, card present, pcscd up; 0 disables it")
    heartbeat_dir: Path = Field(default=Path("/tmp/eeszt-gw-bridge"),
                                description="folder of the heartbeat file that --check reads")
    used_challenges: Path | None = Field(
        default=None, description="file of the challenge ids this bridge has used, kept until "
        "they expire so that a replay is refused after a restart too (0600; default: "
        "HEARTBEAT_DIR/used-challenges-WORKSTATION.json)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="how much to log")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def used_challenges_file(self) -> Path:
        return self.used_challenges or self.heartbeat_dir / f"used-challenges-{self.workstation}.json"
