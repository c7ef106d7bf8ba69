"""One configuration model for every command: a settings class is the only place a setting lives.

Each process declares its settings once, as a pydantic-settings class (``WorkerSettings``,
``BridgeSettings``, ...). :func:`add_settings` turns that class into the command's flags: the
flag, its ``[env: NAME]``, its help and its default all come from the field. :func:`load`
builds the settings for a run from four sources, the first that sets a value winning:

1. the command-line flag (``--broker-url``)
2. the environment variable (``EESZT_BROKER_URL``)
3. the TOML file named by ``--config FILE`` (or ``EESZT_CONFIG``)
4. the field's default

Names are derived, never written twice: field ``broker_url`` is flag ``--broker-url``, env var
``<prefix>BROKER_URL`` and file key ``broker_url``. The same concept has the same field name in
every settings class, hence one flag and one env var in every command.

The file holds top-level keys and, optionally, one table per command (``[worker]``,
``[card-bridge]``...), whose keys win over the top-level ones for that command. A key that no
command knows, a table that is not a command, or a key in a command's table that the command
does not know is an error that names it. A top-level key that only other commands know is
left to them, so one file can serve every process of a host.

Errors are raised as :class:`UsageError`; the top-level command prints them as
``error: ...`` lines and exits with status 2. Nothing here does I/O at import; the environment
is read when :func:`load` runs.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import importlib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eeszt_gw.amqp import BrokerConfigError, BrokerTLS, broker_addresses

__all__ = ["BrokerSettings", "CONFIG_ENV", "ENV_NOTE", "DEFAULT_BROKER_URL", "UsageError",
           "add_command", "add_settings",
           "env_of", "flag_of", "load", "read_config_file"]

S = TypeVar("S", bound=BaseSettings)

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
CONFIG_ENV = "EESZT_CONFIG"
#: Settings that hold several values in one string, comma-separated: the flag may be repeated
#: and the --config key may be a TOML list; either way the values are joined with commas.
JOINED_LISTS: dict[str, str] = {
    "broker_url": "several nodes of one broker: repeat the flag or separate the URLs with "
                  "commas; each connect tries them in turn",
}
#: The sentence every command's description ends with.
ENV_NOTE = ("Each setting is a flag, an environment variable (shown as [env: NAME]) or a key of "
            "the --config file; flags win over the environment, which wins over the file.")

#: Every command that reads a settings class, and that class (imported only when a file's
#: top-level key is unknown to the running command, to tell "another command's" from "nobody's").
SETTINGS_OF_COMMAND: dict[str, str] = {
    "worker": "workers.settings:WorkerSettings",
    "card-bridge": "card_bridge.settings:BridgeSettings",
    "simulator": "simulator.settings:SimulatorSettings",
    "virtual-card": "simulator.settings:VirtualCardSettings",
    "pki": "simulator.settings:PkiRevokeSettings",
    "publish": "producers.settings:PublishSettings",
    "replies": "producers.settings:RepliesSettings",
    "status": "eeszt_gw.ops.settings:StatusSettings",
    "dlq": "eeszt_gw.ops.settings:OpsSettings",
    "audit": "eeszt_gw.ops.settings:OpsSettings",
    "demo": "eeszt_gw.demo_cli:DemoSettings",
    "console": "eeszt_gw.console.settings:ConsoleSettings",
}


class UsageError(Exception):
    """A wrong flag, environment variable or file: one ``error:`` line each, exit status 2."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class BrokerSettings(BaseSettings):
    """The broker fields every command that talks to RabbitMQ shares, with the same names."""

    model_config = SettingsConfigDict(env_ignore_empty=True)

    broker_url: str = Field(default=DEFAULT_BROKER_URL,
                            description="RabbitMQ URL: amqp://, or amqps:// for TLS")
    broker_ca: Path | None = Field(
        default=None, description="amqps:// only: CA file (PEM) of the broker's certificate; "
        "the certificate and its host name are always verified (default: the system's CAs)")
    broker_cert: Path | None = Field(
        default=None, description="amqps:// only: this client's certificate (PEM), for a broker "
        "that requires one (default: none)")
    broker_key: Path | None = Field(
        default=None, description="amqps:// only: the private key (PEM) of --broker-cert "
        "(default: inside --broker-cert)")

    def broker_tls(self) -> BrokerTLS | None:
        """The broker TLS files, or None when none is set. Raises UsageError."""
        try:
            return BrokerTLS.from_paths(self.broker_ca, self.broker_cert, self.broker_key)
        except BrokerConfigError as exc:
            raise UsageError(f"broker: {exc}") from None

    @field_validator("broker_url", mode="before")
    @classmethod
    def _join_urls(cls, value: object) -> object:
        return _joined(value)

    def checked_broker_tls(self) -> BrokerTLS | None:
        """:meth:`broker_tls`, after checking that every URL and the files can be used (no
        connection)."""
        tls = self.broker_tls()
        try:
            broker_addresses(self.broker_url, tls)
        except BrokerConfigError as exc:
            raise UsageError(f"broker: {exc}") from None
        return tls


def _joined(value: object) -> object:
    """A list of values (repeated flag, TOML list) as one comma-separated string."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value)
    return value


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_of(cls: type[BaseSettings], name: str) -> str:
    return (cls.model_config.get("env_prefix") or "") + name.upper()


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def shown(value: Any) -> str | None:
    """A default as a user would type it, or None when there is nothing to show."""
    if value is None or isinstance(value, SecretStr):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(map(str, value)) or None
    return str(value)


def _help(cls: type[BaseSettings], name: str, field: Any) -> str:
    text = (field.description or name.replace("_", " ")).rstrip(".")
    if name in JOINED_LISTS:  # before a "(default: ...)" the description may end with
        head, sep, tail = text.rpartition(" (default:")
        text = f"{head if sep else text}; {JOINED_LISTS[name]}{sep}{tail if sep else ''}"
    if field.is_required():
        text += " (required)"
    else:
        default = shown(field.get_default(call_default_factory=True))
        if default is not None and "(default:" not in text:
            text += f" (default: {default})"
    return f"{text} [env: {env_of(cls, name)}]".replace("%", "%%")


def add_settings(parser: argparse.ArgumentParser, cls: type[BaseSettings], *,
                 title: str | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag for every field of ``cls`` (except ``exclude``), and ``--config FILE``.

    Flags default to "not given" so that :func:`load` can tell a flag from the environment.
    """
    target = parser.add_argument_group(title) if title else parser
    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        kind = _unwrap(field.annotation)
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(cls, name, field),
                              "dest": name}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            kw["choices"] = [str(a) for a in typing.get_args(kind)]
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            kw["choices"] = [str(m.value) for m in kind]
        elif typing.get_origin(kind) is list:
            kw.update(action="append", metavar=name.upper().removesuffix("S") or name.upper())
        elif name in JOINED_LISTS:
            kw.update(action="append", metavar=_metavar(name, kind))
        elif kind in (int, float):
            kw["type"] = kind
        if "metavar" not in kw and "choices" not in kw and "action" not in kw:
            kw["metavar"] = _metavar(name, kind)
        target.add_argument(flag_of(name), **kw)
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file of settings (keys as the flags, with _ for -; a "
                             "[COMMAND] table wins over top-level keys); flags and environment "
                             f"variables win over it [env: {CONFIG_ENV}]")
    parser.set_defaults(settings_class=cls)


def add_command(sub: Any, name: str, cls: type[S], run: Any, *, help: str, description: str,
                table: str | None = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with ``cls``'s flags; running it calls ``run(settings, ns)``
    with the settings :func:`load` built (``table``: its --config table, default ``name``)."""
    p = sub.add_parser(name, help=help, description=f"{description} {ENV_NOTE}")
    add_settings(p, cls)
    p.set_defaults(func=lambda ns: run(load(cls, ns, table or name), ns))
    return p


def _metavar(name: str, kind: Any) -> str:
    if name.endswith("_url"):
        return "URL"
    if name.endswith("_dir"):
        return "DIR"
    if kind is Path:
        return "FILE"
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s"):
        return "S"
    return "N" if kind in (int, float) else name.rsplit("_", 1)[-1].upper()


def _settings_class(ref: str) -> type[BaseSettings]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def read_config_file(path: str | Path, cls: type[BaseSettings], command: str) -> dict[str, Any]:
    """The values of ``path`` for ``command``, whose settings are ``cls``. Raises UsageError."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
    mine = set(cls.model_fields)
    values: dict[str, Any] = {}
    problems: list[str] = []
    others: set[str] | None = None
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SETTINGS_OF_COMMAND and key != command:
                problems.append(f"--config {path}: unknown table [{key}]"
                                + _suggest(key, SETTINGS_OF_COMMAND))
            continue
        if key in mine:
            values[key] = value
            continue
        if others is None:
            others = {n for c, ref in SETTINGS_OF_COMMAND.items() if c != command
                      for n in _settings_class(ref).model_fields}
        if key not in others:
            problems.append(f"--config {path}: unknown key {key!r}"
                            + _suggest(key, mine | others))
    for key, value in (data.get(command) or {}).items():
        if key in mine:
            values[key] = value
        else:
            problems.append(f"--config {path}: [{command}]: unknown key {key!r}"
                            + _suggest(key, mine))
    if problems:
        raise UsageError(*problems)
    return values


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load(cls: type[S], ns: argparse.Namespace, command: str) -> S:
    """The settings of this run: flags, then environment, then the ``--config`` file, then
    defaults. Raises UsageError naming each bad value's flag and where the value came from."""
    flags = {k: _joined(v) if k in JOINED_LISTS else v
             for k, v in vars(ns).items() if k in cls.model_fields}
    path = getattr(ns, "config", None) or os.environ.get(CONFIG_ENV) or None
    from_file = read_config_file(path, cls, command) if path else {}
    # an empty variable counts as unset where the class says so (env_ignore_empty)
    ignore_empty = cls.model_config.get("env_ignore_empty", False)
    environ = {k.upper() for k, v in os.environ.items() if v or not ignore_empty}
    from_file = {k: _joined(v) if k in JOINED_LISTS else v for k, v in from_file.items()
                 if k not in flags and env_of(cls, k) not in environ}
    try:
        return cls(**{**from_file, **flags})
    except ValidationError as exc:
        raise UsageError(*(_describe(cls, e, flags, from_file, path)
                           for e in exc.errors())) from None


def _describe(cls: type[BaseSettings], error: Any, flags: dict, from_file: dict,
              path: str | None) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    name = loc[0] if loc else ""
    if name not in cls.model_fields:
        return str(error.get("msg"))
    where = ("" if name in flags else f" (in {path})" if name in from_file
             else f" (from {env_of(cls, name)})" if env_of(cls, name) in os.environ else "")
    msg = error.get("msg", "invalid")
    if error.get("type") == "missing":
        msg = f"required: give it, or set {env_of(cls, name)} or {name!r} in --config"
    return f"{flag_of(name)}: {msg}{where}"
