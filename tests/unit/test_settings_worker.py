"""The worker's and the demo's settings: every flag comes from the settings class
(eeszt_gw.config), and a bad value is one ``error:`` line that names its flag. Offline."""

from __future__ import annotations

import os

import pytest

from eeszt_gw.cli import build_parser, main
from eeszt_gw.config import UsageError, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith("EESZT_"):
            monkeypatch.delenv(var)


def help_of(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def worker(*argv: str):
    from workers.settings import WorkerSettings

    return load(WorkerSettings, build_parser().parse_args(["worker", *argv]), "worker")


# --- worker -------------------------------------------------------------------------------------
def test_worker_help_names_every_setting_its_env_var_and_the_check_switch(capsys):
    from workers.settings import WorkerSettings

    text = help_of(capsys, "worker")
    for name in WorkerSettings.model_fields:
        assert f"--{name.replace('_', '-')} " in text, name
        assert f"[env: EESZT_{name.upper()}]" in text, name
    assert "--check" in text and "[env: EESZT_CONFIG]" in text
    assert "(default: 16) [env: EESZT_THREADS]" in text
    assert "(default: his-users) [env: EESZT_TENANTS]" in text
    assert "None" not in text


def test_the_token_key_shows_no_default_and_asks_for_the_environment(capsys):
    text = help_of(capsys, "worker")
    token = text[text.index("--token-key KEY base64"):text.index("[env: EESZT_TOKEN_KEY]")]
    assert "prefer the environment" in token and "visible in ps" in token


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("EESZT_THREADS", "8")
    monkeypatch.setenv("EESZT_QUEUES", "batch")
    s = worker("--threads", "4", "--bridge-users")
    assert (s.threads, s.queue_classes(), s.bridge_users) == (4, ["batch"], True)
    assert worker("--no-interactive-logins").interactive_logins is False


@pytest.mark.parametrize("argv, flag", [
    (["--threads", "0"], "--threads: "),
    (["--queues", "foo"], "--queues: unknown queue class 'foo'"),
    (["--queues", "interactive,bulk"], "--queues: unknown queue class 'bulk'"),
    (["--processes", "65"], "--processes: "),
])
def test_a_bad_worker_value_is_a_usage_error_naming_its_flag(argv, flag):
    with pytest.raises(UsageError) as err:
        worker(*argv)
    (line,) = err.value.lines
    assert line.startswith(flag), line


def test_a_bad_value_from_the_environment_says_so(monkeypatch, capsys):
    monkeypatch.setenv("EESZT_QUEUES", "foo")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --queues: unknown queue class 'foo'") and err.count("\n") == 1
    assert "(from EESZT_QUEUES)" in err


def test_the_worker_command_prints_a_bad_flag_as_one_error_line(capsys):
    assert main(["worker", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threads: ") and err.count("\n") == 1, err


def test_log_level_is_a_choice_and_the_environment_may_shout(monkeypatch):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--log-level", "verbose"])
    monkeypatch.setenv("EESZT_LOG_LEVEL", "WARNING")
    assert worker().log_level == "warning"
    monkeypatch.setenv("EESZT_LOG_LEVEL", "chatty")
    with pytest.raises(UsageError, match="--log-level: .*from EESZT_LOG_LEVEL"):
        worker()


def test_the_worker_reads_a_config_file(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text('threads = 3\n[worker]\nqueues = "interactive"\n')
    s = worker("--config", str(conf))
    assert (s.threads, s.queue_classes()) == (3, ["interactive"])


# --- demo ---------------------------------------------------------------------------------------
def demo(*argv: str):
    from eeszt_gw.demo_cli import DemoSettings

    return load(DemoSettings, build_parser().parse_args(["demo", *argv]), "demo")


def test_the_demo_broker_url_comes_from_the_flag_or_the_environment(monkeypatch):
    url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert demo().broker_url is None  # the embedded broker
    assert demo("--broker-url", url).broker_url == url
    monkeypatch.setenv("EESZT_BROKER_URL", url)
    assert demo().broker_url == url


def test_the_demo_hands_its_settings_to_run_demo(monkeypatch):
    import eeszt_gw.demo

    seen = {}
    monkeypatch.setattr(eeszt_gw.demo, "run_demo", lambda **kw: seen.update(kw) or 0)
    monkeypatch.setenv("EESZT_THREADS", "4")
    assert main(["demo", "--broker-url", "amqp://h/%2F", "--prescriptions", "20",
                 "--latency-ms", "5"]) == 0
    assert seen["broker_url"] == "amqp://h/%2F" and seen["prescriptions"] == 20
    assert (seen["threads"], seen["latency_ms"], seen["referrals"], seen["seed"]) == (4, 5, 150, 7)


def test_demo_help_names_every_setting(capsys):
    from eeszt_gw.demo_cli import DemoSettings

    text = help_of(capsys, "demo")
    for name in DemoSettings.model_fields:
        assert f"[env: EESZT_{name.upper()}]" in text, name
    assert "(default: the embedded broker) [env: EESZT_BROKER_URL]" in text
    assert "--broker " not in text


def test_a_bad_demo_count_is_a_usage_error(capsys):
    assert main(["demo", "--threads", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --threads: ")
