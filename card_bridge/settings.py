"""Settings of a card bridge: flags first, then ``EESZT_BRIDGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eeszt_gw.amqp import BrokerTLS

#: /metrics of the card bridge: just below the workers' 12100 + slot (workers/settings.py says
#: why not 9100-9999), so a demo host running both has no clash.
DEFAULT_METRICS_PORT = 12099


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESZT_BRIDGE_", extra="ignore")

    workstation: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                             description="this workstation's id, as HIS requests name it")
    broker_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/%2F",
                            description="RabbitMQ URL; in production a user that may read only "
                                        "this workstation's queue")
    broker_ca: Path | None = Field(default=None, description="amqps://: CA file of the broker's "
                                   "certificate (default: the system's CAs); always verified")
    broker_cert: Path | None = Field(default=None, description="amqps://: this bridge's client "
                                     "certificate, for a broker that requires one")
    broker_key: Path | None = Field(default=None, description="amqps://: the key of broker_cert")
    challenge_key: Path = Field(default=Path("pki/challenge.pem"),
                                description="the gateway's challenge public key (pinned)")
    eid_url: str = Field(default="https://localhost:8445", description="the eID server")
    eid_ca: Path | None = Field(default=Path("pki/server-ca.pem"),
                                description="CA of the eID server's certificate")
    login_method: Literal["eszig", "mobiltoken"] = Field(
        default="eszig", description="how doctors log in at this workstation: eszig (eSZIG card "
        "and PIN) or mobiltoken (the doctor types the code of the MobilToken app; the bridge "
        "posts it straight to the eID server, never to the broker)")
    reader: str | None = Field(default=None, description="use the first reader whose name contains this")
    card_wait_s: float = Field(default=30.0, gt=0, description="how long to wait for a card")
    prompt_timeout_s: float = Field(default=120.0, gt=0, description="how long to wait for the PIN")
    eid_timeout_s: float = Field(default=10.0, gt=0)
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535,
                              description="Prometheus /metrics port on 127.0.0.1; 0 disables it")
    heartbeat_dir: Path = Field(default=Path("/tmp/eeszt-gw-bridge"))
    used_challenges: Path | None = Field(
        default=None, description="file of the challenge ids this bridge has used, kept until "
        "they expire so that a replay is refused after a restart too (0600; default: "
        "HEARTBEAT_DIR/used-challenges-WORKSTATION.json)")
    log_level: str = "info"

    def broker_tls(self) -> BrokerTLS | None:
        """The broker TLS files, or None when none is set. Raises BrokerConfigError."""
        return BrokerTLS.from_paths(self.broker_ca, self.broker_cert, self.broker_key)

    def used_challenges_file(self) -> Path:
        return self.used_challenges or self.heartbeat_dir / f"used-challenges-{self.workstation}.json"
