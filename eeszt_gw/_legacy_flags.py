"""TEMPORARY: the hand-written flag helpers, until each command's flags come from its settings
class (eeszt_gw/config.py). Delete this module when nothing imports it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ENV_NOTE = "Every flag can also be set as an environment variable (shown as [env: NAME])."


def _add(p: argparse.ArgumentParser, flag: str, env: str, help: str, **kw) -> None:
    p.add_argument(flag, default=argparse.SUPPRESS, help=f"{help} [env: {env}]", **kw)


def _given(ns: argparse.Namespace, *skip: str) -> dict:
    return {k: v for k, v in vars(ns).items() if k not in {"func", "cmd", "sub", *skip}}


def _add_broker_tls(p: argparse.ArgumentParser, prefix: str = "EESZT_") -> None:
    """TLS to RabbitMQ: the files for an amqps:// --broker-url (eeszt_gw/amqp.py)."""
    _add(p, "--broker-ca", prefix + "BROKER_CA", "amqps:// only: CA file (PEM) of the broker's "
         "certificate; the certificate and its host name are always verified (default: the "
         "system's CAs)")
    _add(p, "--broker-cert", prefix + "BROKER_CERT", "amqps:// only: client certificate (PEM), "
         "for a broker that requires one (default: none)")
    _add(p, "--broker-key", prefix + "BROKER_KEY", "amqps:// only: the private key (PEM) of "
         "--broker-cert (default: inside --broker-cert)")


def _broker_config_error(url: str, tls) -> str | None:
    """Why the broker URL and TLS files cannot be used (one line), or None when they can."""
    from eeszt_gw.amqp import BrokerConfigError, broker_parameters

    try:
        broker_parameters(url, tls)
    except BrokerConfigError as exc:
        return str(exc)
    return None
