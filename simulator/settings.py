"""Settings of the simulator process: flags first, then EESZT_SIM_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .faults import DuplicatesMode


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESZT_SIM_", extra="forbid")

    pki_dir: Path = Field(default=Path("pki"), description="folder written by `eeszt-gw pki init`")
    host: str = Field(default="127.0.0.1", description="address of the HTTPS service port")
    port: int = Field(default=8443, ge=0, le=65535, description="HTTPS service port (mutual TLS)")
    admin_port: int = Field(default=8444, ge=0, le=65535,
                            description="plain-HTTP admin port, always bound to 127.0.0.1")
    eid_port: int = Field(default=8445, ge=0, le=65535,
                          description="HTTPS port of the eID server (server-auth TLS only), on HOST")
    ocsp_port: int = Field(default=8446, ge=0, le=65535,
                           description="plain-HTTP port of the OCSP responder and the CRLs, on "
                                       "HOST; 0 disables it")
    eid_package_ttl_s: int = Field(default=120, ge=1, description="lifetime of an eID request package")
    rid_ttl_s: int = Field(default=60, ge=1, description="lifetime of an rID package")
    db: Path = Field(default=Path("var/simulator.sqlite"), description="SQLite file of records")
    users_file: Path | None = Field(default=None,
                                    description="sector users (default: PKI_DIR/users.json)")
    duplicates: DuplicatesMode = DuplicatesMode.DEDUPE
    token_lifetime_s: int = Field(default=3600, ge=1)
    max_skew_s: float = Field(default=300.0, ge=0)
    max_timestamp_lifetime_s: float = Field(
        default=900.0, gt=0, description="longest WS-Security Timestamp lifetime (Expires - Created)")
    require_two_factor: bool = Field(
        default=True, description="doctor tokens from a password login may not write patient data")
    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    reset_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=30.0, ge=0)
    ambiguous_rate: float = Field(default=0.0, ge=0, le=1)
    outage: list[str] = Field(default_factory=list, description="START/END windows")
    faults_on_sts: bool = False
    seed: int | None = None
    keep_alive_s: int = Field(default=120, ge=1)
    log_level: str = "info"
