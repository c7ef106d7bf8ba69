"""The settings of ``eeszt-gw console`` (:class:`ConsoleSettings`): the broker and the status
report's settings, as ``eeszt-gw status`` has them, and the web server's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from eeszt_gw.ops.settings import StatusSettings

#: Not in 9100-9999 (Prometheus's exporter ports, fully allocated; README "Metrics") and below
#: the card bridge's 12099 and the workers' 12100+.
DEFAULT_CONSOLE_PORT = 12090


class ConsoleSettings(StatusSettings):
    """``eeszt-gw console``: the broker (``EESZT_BROKER_*``), the status report's thresholds
    (as ``eeszt-gw status``) and the web server. ``add-user``, ``remove-user`` and
    ``list-users`` read only ``users_file``."""

    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="ignore", env_ignore_empty=True)

    host: str = Field(default="127.0.0.1", description="address the console listens on")
    port: int = Field(default=DEFAULT_CONSOLE_PORT, ge=1, le=65535,
                      description="TCP port the console listens on")
    users_file: Path | None = Field(
        default=None, description="JSON file of the console's users, their roles and password "
        "hashes (required; written by `eeszt-gw console add-user`)")
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0,
                                 description="a login lasts this long, then asks again")
    tls_cert: Path | None = Field(
        default=None, description="serve HTTPS with this certificate (PEM; with --tls-key); "
        "session cookies are then marked Secure (default: plain HTTP)")
    tls_key: Path | None = Field(default=None, description="the private key (PEM) of --tls-cert")
    trust_proxy_user_header: str | None = Field(
        default=None, description="trust this request header as the logged-in user's name, set "
        "by a reverse proxy that authenticates (only the proxy may then reach the console; the "
        "user must still be in --users-file, for the role) (default: off)")
    refresh_s: float = Field(default=5.0, ge=1,
                             description="how often the overview page asks for a new report")

    @model_validator(mode="after")
    def _tls_pair(self) -> "ConsoleSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PydanticCustomError("tls_pair", "--tls-cert and --tls-key go together: give both "
                                     "or neither")
        return self
