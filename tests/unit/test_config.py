"""eeszt_gw.config: flags generated from a settings class; flags > env > --config file > defaults."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from eeszt_gw.config import BrokerSettings, UsageError, add_settings, load, read_config_file


class Toy(BrokerSettings):
    model_config = SettingsConfigDict(env_prefix="TOYGW_", extra="forbid")

    name: str = Field(description="who this is")
    threads: int = Field(default=16, ge=1, description="worker threads")
    read_timeout_s: float = Field(default=30.0, gt=0, description="answer timeout")
    mode: Literal["fast", "safe"] = Field(default="safe", description="how")
    verbose: bool = Field(default=False, description="say more")
    pki_dir: Path = Field(default=Path("pki"), description="the PKI folder")
    outage: list[str] = Field(default_factory=list, description="START/END windows")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_settings(p, Toy)
    return p


def run(argv: list[str]) -> Toy:
    return load(Toy, parser().parse_args(argv), "toy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("TOYGW_NAME", "TOYGW_THREADS", "TOYGW_BROKER_URL", "EESZT_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def test_help_names_every_env_var_and_shows_defaults_as_typed():
    # Given the generated parser
    text = " ".join(parser().format_help().split())
    # Then every field has its flag and env var, defaults as a user types them, required marked
    for field in Toy.model_fields:
        assert f"--{field.replace('_', '-')}" in text
        assert f"[env: TOYGW_{field.upper()}]" in text
    assert "(default: 16)" in text and "(default: 30)" in text and "(default: off)" in text
    assert "(default: amqp://guest:guest@127.0.0.1:5672/%2F)" in text
    assert "who this is (required)" in text
    assert "None" not in text and "['" not in text
    assert "[env: EESZT_CONFIG]" in text


def test_flags_win_over_env_which_wins_over_the_file_which_wins_over_defaults(tmp_path, monkeypatch):
    # Given a file setting three values, and the environment setting two of them
    conf = tmp_path / "gw.toml"
    conf.write_text('name = "from-file"\nthreads = 3\nread_timeout_s = 7\n')
    monkeypatch.setenv("TOYGW_THREADS", "5")
    monkeypatch.setenv("TOYGW_NAME", "from-env")
    # When a flag sets the name
    s = run(["--config", str(conf), "--name", "from-flag"])
    # Then the flag wins, then the env, then the file, then the default
    assert s.name == "from-flag"
    assert s.threads == 5
    assert s.read_timeout_s == 7
    assert s.mode == "safe"


def test_the_config_file_can_come_from_the_environment(tmp_path, monkeypatch):
    conf = tmp_path / "gw.toml"
    conf.write_text('name = "n"\n[toy]\nthreads = 4\n')
    monkeypatch.setenv("EESZT_CONFIG", str(conf))
    # A [command] table wins over a top-level key
    s = run([])
    assert (s.name, s.threads) == ("n", 4)


def test_an_unknown_key_in_the_file_is_an_error_that_names_it(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text('name = "n"\nthreds = 4\n')
    with pytest.raises(UsageError) as err:
        run(["--config", str(conf)])
    assert "unknown key 'threds'" in str(err.value) and "did you mean 'threads'" in str(err.value)


def test_a_key_of_another_command_is_left_to_it_but_not_inside_this_commands_table(tmp_path):
    # Given a key only the card bridge knows, at the top level and in this command's table
    conf = tmp_path / "gw.toml"
    conf.write_text('workstation = "WS-1"\nname = "n"\n')
    assert run(["--config", str(conf)]).name == "n"
    conf.write_text('name = "n"\n[toy]\nworkstation = "WS-1"\n')
    with pytest.raises(UsageError, match=r"\[toy\]: unknown key 'workstation'"):
        run(["--config", str(conf)])


def test_an_unknown_table_and_bad_toml_are_errors(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text('[wrker]\nthreads = 2\n')
    with pytest.raises(UsageError, match=r"unknown table \[wrker\].*'worker'"):
        read_config_file(conf, Toy, "toy")
    conf.write_text('threads = \n')
    with pytest.raises(UsageError, match="not valid TOML"):
        read_config_file(conf, Toy, "toy")
    with pytest.raises(UsageError, match="No such file"):
        read_config_file(tmp_path / "missing.toml", Toy, "toy")


def test_a_bad_value_names_the_flag_and_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("TOYGW_THREADS", "0")
    with pytest.raises(UsageError) as err:
        run(["--name", "n"])
    assert err.value.lines[0].startswith("--threads: ")
    assert "(from TOYGW_THREADS)" in err.value.lines[0]
    monkeypatch.delenv("TOYGW_THREADS")
    conf = tmp_path / "gw.toml"
    conf.write_text('read_timeout_s = -1\n')
    with pytest.raises(UsageError, match=rf"--read-timeout-s: .*\(in {conf}\)"):
        run(["--name", "n", "--config", str(conf)])


def test_a_missing_required_setting_says_every_way_to_give_it():
    with pytest.raises(UsageError, match="--name: required: give it, or set TOYGW_NAME"):
        run([])


def test_typed_flags_booleans_choices_and_lists():
    s = run(["--name", "n", "--verbose", "--mode", "fast", "--outage", "a/b", "--outage", "c/d"])
    assert s.verbose is True and s.mode == "fast" and s.outage == ["a/b", "c/d"]
    assert run(["--name", "n", "--no-verbose"]).verbose is False
    with pytest.raises(SystemExit):
        parser().parse_args(["--mode", "slow"])


def test_broker_tls_problems_are_usage_errors_naming_the_broker():
    s = run(["--name", "n", "--broker-key", "k.pem"])
    with pytest.raises(UsageError, match="broker: .*--broker-cert"):
        s.broker_tls()
    s = run(["--name", "n", "--broker-url", "http://x", ])
    with pytest.raises(UsageError, match="broker: the broker URL must start with amqp"):
        s.checked_broker_tls()
