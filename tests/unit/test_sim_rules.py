"""The simulator's switchable rules: start values from flags and environment, run-time changes
that name the field, and the Timestamp lifetime limit of the WS-Security verifier."""

from __future__ import annotations

import pytest
from lxml import etree

from eeszt_gw.cli import build_parser
from eeszt_gw.config import UsageError, load
from schemas.soap import SOAP11_NS, FaultCode
from simulator.rules import Rules, authorize, stamp_of
from simulator.settings import SimulatorSettings
from simulator.soapio import SoapFault
from simulator.wsse import WsseError, WsseVerifier
from workers.client.wsse import WsseSigner


def _settings(argv: list[str]) -> SimulatorSettings:
    return load(SimulatorSettings, build_parser().parse_args(["simulator", *argv]), "simulator")


def test_two_factor_is_required_by_default_and_a_flag_turns_it_off(monkeypatch):
    monkeypatch.delenv("EESZT_SIM_REQUIRE_TWO_FACTOR", raising=False)
    assert _settings([]).require_two_factor is True
    assert _settings(["--no-require-two-factor"]).require_two_factor is False
    assert _settings(["--require-two-factor"]).require_two_factor is True


def test_the_environment_turns_two_factor_off(monkeypatch):
    monkeypatch.setenv("EESZT_SIM_REQUIRE_TWO_FACTOR", "false")
    assert _settings([]).require_two_factor is False


def test_the_timestamp_lifetime_is_a_positive_setting(monkeypatch):
    assert _settings(["--max-timestamp-lifetime-s", "60"]).max_timestamp_lifetime_s == 60
    with pytest.raises(UsageError, match="--max-timestamp-lifetime-s"):
        _settings(["--max-timestamp-lifetime-s", "0"])


@pytest.mark.parametrize("changes,field", [
    ({"require_two_factor": "no"}, "require_two_factor"),
    ({"max_timestamp_lifetime_s": -1}, "max_timestamp_lifetime_s"),
    ({"max_timestamp_lifetime_s": True}, "max_timestamp_lifetime_s"),
    ({"two_factor": False}, "two_factor"),
    (["require_two_factor"], "body"),
])
def test_a_bad_rule_change_names_the_field(changes, field):
    with pytest.raises(ValueError) as exc:
        Rules().changed(changes)
    assert str(exc.value).startswith(f"{field}: ")


def test_a_rule_change_keeps_the_other_rules():
    changed = Rules().changed({"require_two_factor": False})
    assert changed == Rules(require_two_factor=False, max_timestamp_lifetime_s=900.0)


@pytest.mark.parametrize("method,refused", [("password", True), ("mobiltoken", False),
                                            ("eszig", False)])
def test_only_a_two_factor_doctor_writes_patient_data(method, refused):
    call = dict(service="eRecept", op_name="receptRogzites", role="doctor", method=method,
                rules=Rules())
    if refused:
        with pytest.raises(SoapFault) as exc:
            authorize(**call)
        assert exc.value.code is FaultCode.TWO_FACTOR_REQUIRED
    else:
        authorize(**call)


def test_the_two_factor_rule_spares_queries_and_can_be_off():
    authorize(service="eRecept", op_name="lekerdezesKulcsAlapjan", role="doctor",
              method="password", rules=Rules())
    authorize(service="eRecept", op_name="receptRogzites", role="doctor", method="password",
              rules=Rules(require_two_factor=False))


def test_the_stamp_of_a_doctor_is_the_user_id_without_its_letter():
    assert stamp_of("O10001") == "10001"


def _envelope() -> etree._Element:
    return etree.fromstring(f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
                            '<m:x xmlns:m="urn:test">1</m:x></soap:Body></soap:Envelope>')


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from simulator.pki import init_pki

    return init_pki(tmp_path_factory.mktemp("rules") / "pki")


def test_the_verifier_refuses_a_timestamp_that_lives_longer_than_allowed(pki):
    # Given a verifier with the default limit (15 min) and a signer whose Timestamps live 16 min
    verifier = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()])
    long_lived = WsseSigner(key_pem=pki.institution_key.read_bytes(),
                            cert_pem=pki.institution_cert.read_bytes(), ttl_seconds=960)
    env = long_lived.sign(_envelope())
    # When it verifies, then it refuses, saying so
    with pytest.raises(WsseError) as exc:
        verifier.verify(env)
    assert exc.value.code is FaultCode.TIMESTAMP_STALE and "900 s allowed" in str(exc.value)
    # And a verifier whose limit is raised accepts the same message
    verifier.max_lifetime_seconds = 960
    assert verifier.verify(env).institution_id == "H100200"
