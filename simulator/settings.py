"""Settings of the simulator's commands: each field is one flag, one environment variable and one
``--config`` key (:mod:`eeszt_gw.config` generates the flags and builds the settings).

The simulator process and the virtual card read ``EESZT_SIM_*``: they stand in for EESZT, the
other party, so a host running both the gateway and the simulator never mixes their settings.
``pki revoke`` works on the gateway's PKI folder, the worker's ``EESZT_PKI_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .faults import DuplicatesMode, OutageWindow

LogLevel = Literal["debug", "info", "warning", "error"]

_RATE = dict(default=0.0, ge=0, le=1)


class SimulatorSettings(BaseSettings):
    """The ``eeszt-gw simulator`` process. Fault and rule values are the start values;
    ``PATCH /admin/faults`` and ``PATCH /admin/rules`` change them at run time."""

    model_config = SettingsConfigDict(env_prefix="EESZT_SIM_", extra="forbid")

    pki_dir: Path = Field(default=Path("pki"), description="folder written by `eeszt-gw pki init`")
    host: str = Field(default="127.0.0.1",
                      description="address of the HTTPS service port; the eID server and the "
                                  "OCSP responder listen on it too")
    port: int = Field(default=8443, ge=0, le=65535,
                      description="HTTPS service port: the STS and the services, mutual TLS")
    admin_port: int = Field(default=8444, ge=0, le=65535,
                            description="plain-HTTP admin port, bound to 127.0.0.1 only")
    eid_port: int = Field(
        default=8445, ge=0, le=65535,
        description="HTTPS port of the eID server (POST /eid/authenticate, GET /eid/health), "
                    "bound to --host, server-auth TLS only: no client certificate")
    ocsp_port: int = Field(
        default=8446, ge=0, le=65535,
        description="plain-HTTP port of the OCSP responder (POST /ocsp, GET /ocsp/<base64>) and "
                    "the CRLs (GET /crl/<ca>.crl), bound to --host; answers from the CRL files "
                    "in --pki-dir, re-read when they change; 0 disables it")
    eid_package_ttl_s: int = Field(default=120, ge=1,
                                   description="lifetime of an eID request package in seconds")
    rid_ttl_s: int = Field(default=60, ge=1, description="lifetime of an rID package in seconds")
    db: Path = Field(default=Path("var/simulator.sqlite"),
                     description="SQLite file that records what was accepted")
    users_file: Path | None = Field(
        default=None, description="sector users JSON (default: users.json in --pki-dir)")
    duplicates: DuplicatesMode = Field(
        default=DuplicatesMode.DEDUPE,
        description="what a repeated idempotency key does: dedupe returns the first record's id, "
                    "naive stores a second record")
    token_lifetime_s: int = Field(default=3600, ge=1,
                                  description="SAML token lifetime in seconds")
    max_skew_s: float = Field(default=300.0, ge=0,
                              description="allowed WS-Security Timestamp clock skew in seconds")
    max_timestamp_lifetime_s: float = Field(
        default=900.0, gt=0,
        description="longest WS-Security Timestamp lifetime (Expires - Created) accepted, in "
                    "seconds; a longer one is refused WSSE-008")
    require_two_factor: bool = Field(
        default=True,
        description="refuse, with AUTHZ-002, doctor tokens from a password login that write "
                    "patient data to eRecept, eBeutalo or eProfil (decree 39/2016 EMMI asks a "
                    "multi-factor login); --no-require-two-factor turns the rule off")
    latency_ms: float = Field(default=0.0, ge=0, description="added latency per call")
    jitter_ms: float = Field(default=0.0, ge=0,
                             description="uniform random jitter on top of the latency")
    error_rate: float = Field(**_RATE, description="share of calls (0 to 1) answered HTTP 500, "
                                                   "fault SRV-002, nothing stored")
    reset_rate: float = Field(**_RATE, description="share of calls (0 to 1) whose connection is "
                                                   "reset before processing")
    hang_rate: float = Field(**_RATE, description="share of calls (0 to 1) that get no answer "
                                                  "for --hang-s, then a reset")
    hang_s: float = Field(default=30.0, ge=0, description="how long a hung call hangs, in seconds")
    ambiguous_rate: float = Field(**_RATE, description="share of calls (0 to 1) that are "
                                  "processed and stored, then reset: the client cannot know the "
                                  "outcome")
    outage: list[str] = Field(
        default_factory=list,
        description="outage window START/END (ISO-8601, or +SECONDS from the simulator's "
                    "start); repeatable; calls in it get HTTP 503, fault SRV-001 (default: none)")
    faults_on_sts: bool = Field(default=False, description="inject the faults into the STS too")
    seed: int | None = Field(default=None,
                             description="random seed of the fault injector, for reproducible "
                                         "runs (default: a different one each run)")
    keep_alive_s: int = Field(default=120, ge=1,
                              description="idle keep-alive of client connections, in seconds")
    log_level: LogLevel = Field(default="info", description="log level")

    @field_validator("outage")
    @classmethod
    def _windows_parse(cls, windows: list[str]) -> list[str]:
        for window in windows:
            OutageWindow.parse(window)  # raises ValueError naming the window
        return windows


class PkiRevokeSettings(BaseSettings):
    """``eeszt-gw pki revoke``: the gateway's PKI folder, the same setting as the worker's."""

    model_config = SettingsConfigDict(env_prefix="EESZT_")

    pki_dir: Path = Field(default=Path("pki"),
                          description="folder written by `eeszt-gw pki init`: the CA there that "
                                      "issued CERT re-signs its CRL")


class VirtualCardSettings(BaseSettings):
    """``eeszt-gw virtual-card``: one virtual eSZIG card, part of the simulated world."""

    model_config = SettingsConfigDict(env_prefix="EESZT_SIM_")

    user: str = Field(description="whose card, e.g. O10001: its files are "
                                  "<user>.key/.pem/.json in --cards-dir")
    cards_dir: Path = Field(default=Path("pki/cards"),
                            description="folder with the cards' files: PKI_DIR/cards of "
                                        "`eeszt-gw pki init`")
    vpcd_host: str = Field(default="127.0.0.1", description="where pcscd's vpcd driver listens")
    vpcd_port: int = Field(default=35963, ge=1, le=65535,
                           description="vpcd slot port (35963 = reader 00 00, 35964 = 00 01)")
