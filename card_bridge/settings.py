"""Settings of a card bridge: flags first, then ``EESZT_BRIDGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESZT_BRIDGE_", extra="ignore")

    workstation: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                             description="this workstation's id, as HIS requests name it")
    broker_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/%2F",
                            description="RabbitMQ URL; in production a user that may read only "
                                        "this workstation's queue")
    challenge_key: Path = Field(default=Path("pki/challenge.pem"),
                                description="the gateway's challenge public key (pinned)")
    eid_url: str = Field(default="https://localhost:8445", description="the eID server")
    eid_ca: Path | None = Field(default=Path("pki/server-ca.pem"),
                                description="CA of the eID server's certificate")
    reader: str | None = Field(default=None, description="use the first reader whose name contains this")
    card_wait_s: float = Field(default=30.0, gt=0, description="how long to wait for a card")
    prompt_timeout_s: float = Field(default=120.0, gt=0, description="how long to wait for the PIN")
    eid_timeout_s: float = Field(default=10.0, gt=0)
    metrics_port: int = Field(default=9101, ge=0, le=65535,
                              description="Prometheus /metrics port on 127.0.0.1; 0 disables it")
    heartbeat_dir: Path = Field(default=Path("/tmp/eeszt-gw-bridge"))
    log_level: str = "info"
