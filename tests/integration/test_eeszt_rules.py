"""The simulator's rules, each refused over real HTTPS: the message, the token, the STS.

Given a real `eeszt-gw simulator` subprocess holding doctors of two institutions, when a client
(the gateway's own signer, mutual-TLS transport and SOAP templates) sends what a rule forbids,
then the answer is a fault with the rule's own code, naming the field where there is one, and
nothing is stored. The business and authorisation rules are in test_eeszt_rules_business.py.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error

import pyotp
import pytest
from lxml import etree

from schemas.soap import DS_NS, WSU_NS, FaultCode
from tests import samples
from tests.institutions import signer_without_institution
from tests.integration.rules_support import post_envelope, refusal, rules, world  # noqa: F401
from workers.client.client import STS_ACTION
from workers.client.soap import build_call, build_sts_request, parse_issue, parse_submit
from workers.client.wsse import WsseSigner

pytestmark = pytest.mark.integration


# --- the WS-Security header -------------------------------------------------------------------
def test_a_timestamp_outside_the_signature_is_refused(rules):
    # Given a signed call whose SignedInfo no longer references the Timestamp
    request = samples.event_start()
    token = rules.institution_token(rules.home)

    def unsign_timestamp(env: etree._Element) -> None:
        ts_id = next(env.iter(f"{{{WSU_NS}}}Timestamp")).get(f"{{{WSU_NS}}}Id")
        ref = next(r for r in env.iter(f"{{{DS_NS}}}Reference") if r.get("URI") == f"#{ts_id}")
        ref.getparent().remove(ref)

    # When it is sent
    err = refusal(lambda: post_envelope(rules.home, request, build_call(request).envelope, token,
                                        tweak=unsign_timestamp))
    # Then it is refused: an unsigned Timestamp could be moved to any other message
    assert err.code == FaultCode.SIGNATURE_SCOPE.value
    assert "Timestamp" in str(err)
    assert rules.sim.stats()["total_records"] == 0


def test_a_timestamp_that_expires_far_in_the_future_is_refused(rules, pki):
    # Given a signer whose Timestamps live an hour (the simulator allows 15 minutes)
    long_lived = WsseSigner(key_pem=pki.institution_key.read_bytes(),
                            cert_pem=pki.institution_cert.read_bytes(), ttl_seconds=3600)
    request = samples.event_start()
    token = rules.institution_token(rules.home)
    # When it signs a call
    err = refusal(lambda: post_envelope(rules.home, request, build_call(request).envelope, token,
                                        signer=long_lived))
    # Then it is refused as a stale Timestamp that says why
    assert err.code == FaultCode.TIMESTAMP_STALE.value
    assert "3600 s" in str(err) and "900 s allowed" in str(err)
    assert rules.sim.stats()["total_records"] == 0
    # And the limit is a rule the admin port can widen
    rules.sim.admin("PATCH", "/admin/rules", {"max_timestamp_lifetime_s": 7200})
    assert post_envelope(rules.home, request, build_call(request).envelope, token,
                         signer=long_lived).eeszt_id


def test_the_timestamp_lifetime_limit_must_be_a_positive_number(rules):
    # When the admin port is asked for a lifetime of zero
    with pytest.raises(urllib.error.HTTPError) as exc:
        rules.sim.admin("PATCH", "/admin/rules", {"max_timestamp_lifetime_s": 0})
    # Then it refuses, naming the field
    assert exc.value.code == 422
    assert json.loads(exc.value.read())["errors"][0]["field"] == "max_timestamp_lifetime_s"
    assert rules.sim.admin("GET", "/admin/rules")["max_timestamp_lifetime_s"] == 900


def test_a_missing_security_header_is_refused(rules):
    # Given a call with no wsse:Security header at all
    request = samples.event_start()
    call = build_call(request)
    body = etree.tostring(call.envelope)
    # When it is sent
    resp = rules.home.transport.post(call.path, body, soap_action=call.soap_action)
    err = refusal(lambda: parse_submit(resp.status, resp.body, service=call.service.name))
    # Then it is refused for the missing header
    assert err.code == FaultCode.SECURITY_HEADER_MISSING.value


# --- the SAML token -----------------------------------------------------------------------------
def test_a_token_of_another_institution_than_the_signer_is_refused(rules):
    # Given H100300's institution token
    foreign = rules.institution_token(rules.other)
    # When H100200's gateway signs a call with it
    err = refusal(lambda: rules.home.submit(samples.event_start(), foreign))
    # Then it is refused: a token is good only with its own institution's signature
    assert err.code == FaultCode.TOKEN_INSTITUTION_MISMATCH.value
    assert rules.sim.stats()["total_records"] == 0


# --- the STS ------------------------------------------------------------------------------------
def _sts(client, signer, **fields):
    body = signer.sign_to_bytes(build_sts_request(**fields))
    resp = client.transport.post("/sts", body, soap_action=STS_ACTION)
    return parse_issue(resp.status, resp.body)


def test_the_x509_route_refuses_a_certificate_that_names_no_institution(rules, pki):
    # Given a qualified certificate without an organizationIdentifier
    nameless = signer_without_institution(pki)
    # When it asks the STS for an institution token
    err = refusal(lambda: _sts(rules.home, nameless, method="x509"))
    # Then the STS refuses: there is no institution to issue the token to
    assert err.code == FaultCode.CERT_UNTRUSTED.value
    assert "names no institution" in str(err)
    assert rules.sim.stats()["sts_issues"] == {}


def test_a_wrong_one_time_code_is_refused(rules):
    # Given a doctor and a six-digit code that is none of the codes valid now
    user = rules.home_doctors[3]
    totp = pyotp.TOTP(user["totp_secret"])
    now = time.time()
    valid = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    wrong = next(c for c in (f"{n:06d}" for n in range(0, 1000000, 111111)) if c not in valid)
    # When the doctor logs in with it
    err = refusal(lambda: rules.home.issue_token(method="mobiltoken", user_id=user["user_id"],
                                                 otp=wrong))
    # Then the login fails on the one-time code
    assert (err.code, err.field) == (FaultCode.AUTH_FAILED.value, "OneTimePassword")
    assert rules.sim.stats()["sts_issues"] == {}


def test_an_unsupported_login_method_is_refused(rules):
    # When a login asks for a method the STS does not know
    err = refusal(lambda: _sts(rules.home, rules.home.signer, method="kerberos",
                               user_id=rules.home_doctors[0]["user_id"]))
    # Then it is refused by the STS contract, naming the method
    assert err.code == FaultCode.SCHEMA_INVALID.value
    assert "AuthenticationMethod" in str(err) and "kerberos" in str(err)
    assert rules.sim.stats()["sts_issues"] == {}


# --- operations ---------------------------------------------------------------------------------
def test_an_unknown_service_is_refused(rules):
    # When a call goes to a service the contract does not have
    request = samples.event_start()
    body = rules.home.signer.sign_to_bytes(build_call(request).envelope)
    resp = rules.home.transport.post("/services/eNincs", body)
    err = refusal(lambda: parse_submit(resp.status, resp.body, service="eNincs"))
    # Then it is refused as an unknown operation
    assert err.code == FaultCode.UNKNOWN_OPERATION.value and resp.status == 404


def test_an_unknown_operation_of_a_known_service_is_refused(rules):
    # Given an esemenyKatalogus call whose operation element is renamed
    request = samples.event_start()
    env = build_call(request).envelope
    op = next(e for e in env.iter() if isinstance(e.tag, str) and e.tag.endswith("}esemenyKezdet"))
    op.tag = op.tag.replace("esemenyKezdet", "esemenyTorles")
    # When it is sent, signed, with a valid token
    err = refusal(lambda: post_envelope(rules.home, request, env,
                                        rules.institution_token(rules.home)))
    # Then the service refuses the operation it does not have
    assert err.code == FaultCode.UNKNOWN_OPERATION.value
    assert "esemenyTorles" in str(err)
    assert rules.sim.stats()["total_records"] == 0


def test_a_timestamp_lifetime_rule_change_is_undone_by_reset(rules):
    # Given the lifetime limit was widened at run time
    rules.sim.admin("PATCH", "/admin/rules", {"max_timestamp_lifetime_s": 7200})
    # When the simulator is reset
    rules.sim.reset(duplicates="naive")
    # Then the start value is back
    assert rules.sim.admin("GET", "/admin/rules") == {"require_two_factor": True,
                                                      "max_timestamp_lifetime_s": 900.0}
    assert rules.sim.stats()["rules"]["max_timestamp_lifetime_s"] == 900.0


def test_two_assertions_in_the_header_are_refused(rules):
    # Given a signed call that carries a second copy of its token in the Security header
    request = samples.event_start()
    token = rules.institution_token(rules.home)

    def second_token(env: etree._Element) -> None:
        assertion = next(env.iter("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"))
        assertion.addnext(copy.deepcopy(assertion))

    # When it is sent
    err = refusal(lambda: post_envelope(rules.home, request, build_call(request).envelope, token,
                                        tweak=second_token))
    # Then it is refused: which token would speak for the call is ambiguous
    assert err.code == FaultCode.TOKEN_INVALID.value
    assert "more than one SAML assertion" in str(err)
