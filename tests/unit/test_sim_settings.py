"""The settings of the simulator's commands: generated flags, their environment variables, the
errors they name, and the flags :mod:`simulator.launch` turns settings into."""

from __future__ import annotations

import pytest

from eeszt_gw.cli import build_parser, main
from eeszt_gw.config import UsageError, load
from simulator.launch import _given, simulator_flags
from simulator.settings import SimulatorSettings, VirtualCardSettings


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("EESZT_"):
            monkeypatch.delenv(name)


def _load(cls, argv: list[str], command: str):
    return load(cls, build_parser().parse_args(argv), command)


def test_a_bad_outage_window_is_a_usage_error_naming_the_flag():
    with pytest.raises(UsageError, match="--outage: .*expected START/END"):
        _load(SimulatorSettings, ["simulator", "--outage", "tomorrow"], "simulator")
    s = _load(SimulatorSettings, ["simulator", "--outage", "+0/+60", "--outage",
                                  "2026-01-01T00:00:00Z/2026-01-01T01:00:00Z"], "simulator")
    assert len(s.outage) == 2


def test_the_log_level_is_one_of_four(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulator", "--log-level", "loud"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_the_virtual_card_reads_its_vpcd_address_from_flags_or_environment(monkeypatch):
    # Given the vpcd port in the environment, and the host as a flag
    monkeypatch.setenv("EESZT_SIM_VPCD_PORT", "35964")
    s = _load(VirtualCardSettings, ["virtual-card", "--user", "O10001", "--vpcd-host", "::1"],
              "virtual-card")
    # Then both are used, and the card folder has its default
    assert (s.user, s.vpcd_host, s.vpcd_port, str(s.cards_dir)) == (
        "O10001", "::1", 35964, "pki/cards")
    # And the simulator's own --host and --port are not the card's flags
    with pytest.raises(SystemExit):
        build_parser().parse_args(["virtual-card", "--user", "O10001", "--port", "1"])


def test_the_virtual_card_defaults_are_the_vpcd_drivers():
    from simulator.card.vpcd import VPCD_HOST, VPCD_PORT

    fields = VirtualCardSettings.model_fields
    assert (fields["vpcd_host"].default, fields["vpcd_port"].default) == (VPCD_HOST, VPCD_PORT)


def test_the_virtual_card_without_a_user_exits_2_naming_every_way_to_give_it(capsys):
    assert main(["virtual-card"]) == 2
    err = capsys.readouterr().err
    assert "error: --user: required" in err and "EESZT_SIM_USER" in err


def test_the_virtual_card_with_no_card_files_exits_2(tmp_path, capsys):
    assert main(["virtual-card", "--user", "O10001", "--cards-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_settings_become_the_simulators_flags():
    flags = simulator_flags(latency_ms=20, require_two_factor=False, faults_on_sts=True,
                            outage=["+0/+5", "+10/+15"], seed=None, duplicates="naive")
    assert flags == ["--latency-ms", "20", "--no-require-two-factor", "--faults-on-sts",
                     "--outage", "+0/+5", "--outage", "+10/+15", "--duplicates", "naive"]
    # And what the simulator makes of them is what was asked, the last of a flag winning
    given = _given([*flags, "--latency-ms", "5"])
    assert (given.latency_ms, given.require_two_factor, given.outage) == (
        5.0, False, ["+0/+5", "+10/+15"])
    with pytest.raises(TypeError, match="no setting 'latency'"):
        simulator_flags(latency=20)
    with pytest.raises(ValueError, match="eeszt-gw simulator: "):
        _given(["--no-such-flag"])
