"""A walk over every subcommand's parser: one broker flag, every env var in --help, one config model.

The parsers are the real ones (``eeszt_gw.cli.build_parser``); a command's settings class is the
one its parser was generated from (``eeszt_gw.config.add_settings`` records it).
"""

from __future__ import annotations

import argparse
import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from eeszt_gw.cli import build_parser
from eeszt_gw.config import CONFIG_ENV, SETTINGS_OF_COMMAND, env_of

ROOT = Path(__file__).resolve().parents[2]

#: Every command that talks to RabbitMQ. A new one must be added here, and so gets checked.
BROKER_COMMANDS = {"worker", "card-bridge", "publish", "replies", "demo", "status", "audit",
                   "dlq list", "dlq show", "dlq replay", "dlq purge",
                   "console add-user", "console remove-user", "console list-users"}
#: The flags of the broker's TLS files and connection behaviour, beside --broker-url.
BROKER_DETAIL_FLAGS = {"--broker-ca", "--broker-cert", "--broker-key",
                       "--broker-connect-timeout-s", "--broker-connect-attempts",
                       "--broker-retry-backoff-s"}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every runnable subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaves(sub, (*path, name))
            return
    yield " ".join(path), parser


LEAVES = dict(leaves(build_parser()))


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for a in parser._actions for opt in a.option_strings}


def help_text(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


def settings_class(parser: argparse.ArgumentParser):
    return parser.get_default("settings_class")


def test_the_walk_finds_every_command():
    # Given the real parser, walked down to its runnable subcommands
    # Then every command of the gateway is there, the nested ones by their full path
    assert {"worker", "card-bridge", "simulator", "publish", "replies", "generate", "status",
            "audit", "dlq list", "dlq replay", "pki init", "pki revoke", "virtual-card", "demo",
            "schema export", "bench"} <= set(LEAVES)
    assert BROKER_COMMANDS <= set(LEAVES)


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_a_command_that_talks_to_the_broker_has_broker_url_and_no_other_broker_flag(command):
    # Given one subcommand's parser and its options
    parser = LEAVES[command]
    opts = options(parser)
    cls = settings_class(parser)
    talks_to_broker = cls is not None and "broker_url" in cls.model_fields
    # Then the broker commands are exactly those whose settings have broker_url
    assert talks_to_broker == (command in BROKER_COMMANDS), command
    if talks_to_broker:
        assert "--broker-url" in opts
    # And no command names the broker another way: no --url, --broker or --amqp-url, and every
    # other --broker-* flag is one of the TLS or connection details
    assert not opts & {"--url", "--broker", "--amqp-url", "--amqp"}, command
    assert {o for o in opts if o.startswith("--broker")} <= {"--broker-url", *BROKER_DETAIL_FLAGS}
    # And no other flag's help offers a broker URL
    for action in parser._actions:
        if action.help and not set(action.option_strings) & {"--broker-url", *BROKER_DETAIL_FLAGS}:
            assert "RabbitMQ URL" not in action.help, (command, action.option_strings)


@pytest.mark.parametrize("command", sorted(c for c, p in LEAVES.items() if settings_class(p)))
def test_every_env_var_read_through_settings_is_named_in_the_commands_help(command):
    # Given a command whose flags come from a settings class
    parser = LEAVES[command]
    cls = settings_class(parser)
    text = help_text(parser)
    # Then its --help names every env var that class reads, and the config file's
    for field in cls.model_fields:
        assert f"[env: {env_of(cls, field)}]" in text, (command, field)
    assert f"[env: {CONFIG_ENV}]" in text
    # And shows no Python repr as a default
    assert "(default: None)" not in text and "default: ['" not in text, command
    # And each setting's flag is the field's name
    for field in cls.model_fields:
        assert "--" + field.replace("_", "-") in options(parser), (command, field)


@pytest.mark.parametrize("command", sorted(SETTINGS_OF_COMMAND))
def test_the_config_file_registry_names_the_class_each_command_is_built_from(command):
    # Given the registry the --config file is checked against
    module, _, attr = SETTINGS_OF_COMMAND[command].partition(":")
    registered = getattr(importlib.import_module(module), attr)
    # Then it is the class that command's flags were generated from
    built = [settings_class(p) for c, p in LEAVES.items()
             if c.split(" ")[0] == command and settings_class(p) is not None]
    assert built and all(cls is registered for cls in built), command


@pytest.mark.parametrize("command", sorted(c for c, p in LEAVES.items() if settings_class(p)))
def test_one_concept_has_one_name_durations_end_in_s(command):
    cls = settings_class(LEAVES[command])
    for field in cls.model_fields:
        # the old spellings of one concept are gone
        assert field not in {"url", "broker", "connect_timeout", "retry_backoff", "retry_attempts"}
        if any(w in field for w in ("timeout", "ttl", "interval", "delay", "window", "lifetime")):
            assert field.endswith(("_s", "_ms")), (command, field)


def test_no_product_module_reads_an_eeszt_env_var_but_through_settings():
    # Given every module of the product packages
    found = []
    for package in ("eeszt_gw", "workers", "producers", "card_bridge", "simulator", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "eeszt_gw" / "config.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                # When a string constant naming an EESZT_ variable is passed to os.environ/getenv
                if isinstance(node, (ast.Call, ast.Subscript)):
                    src = ast.unparse(node)
                    if ("environ" in src or "getenv" in src) and "'EESZT_" in src:
                        found.append(f"{path.relative_to(ROOT)}: {src}")
    # Then there is none: the settings classes are the only readers, so --help names them all
    assert found == []
