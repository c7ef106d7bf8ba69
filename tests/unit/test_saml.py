"""SAML assertions: issue, verify, expiry, tampering, and the trip inside a signed envelope."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from schemas.soap import DS_NS, SAML2_NS, SOAP11_NS, WSSE_NS, FaultCode
from simulator.pki import PkiPaths, init_pki, make_ca, write_pem
from simulator.saml import (
    AUTHN_CONTEXT,
    AssertionIssuer,
    AssertionVerifier,
    SamlError,
    SamlToken,
)
from simulator.wsse import WsseVerifier
from workers.client.wsse import WsseSigner

NS = {"saml2": SAML2_NS, "ds": DS_NS, "soap": SOAP11_NS, "wsse": WSSE_NS}
T0 = datetime(2025, 8, 1, 8, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("saml") / "pki")


@pytest.fixture(scope="module")
def issuer(pki: PkiPaths) -> AssertionIssuer:
    return AssertionIssuer(key_pem=pki.sts_key.read_bytes(), cert_pem=pki.sts_cert.read_bytes())


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0 + timedelta(minutes=1))


@pytest.fixture()
def verifier(pki: PkiPaths, clock: Clock) -> AssertionVerifier:
    return AssertionVerifier(cert_pem=pki.sts_cert.read_bytes(), clock=clock)


def doctor_token(issuer: AssertionIssuer, **overrides: Any) -> etree._Element:
    args = dict(
        subject="O12345",
        role="doctor",
        institution="H100200",
        method="eszig",
        lifetime=timedelta(hours=8),
        workstation="WS-07",
        now=T0,
    )
    args.update(overrides)
    return issuer.issue(**args)


def expect(code: FaultCode, verifier: AssertionVerifier, assertion: etree._Element) -> SamlError:
    with pytest.raises(SamlError) as info:
        verifier.verify(assertion)
    assert info.value.code is code, info.value
    return info.value


# --- issue and verify -------------------------------------------------------------------------
def test_round_trip(issuer: AssertionIssuer, verifier: AssertionVerifier) -> None:
    # Given an assertion issued for a doctor who logged in with the eSZIG card
    assertion = doctor_token(issuer)
    # When it is serialized, parsed and verified
    token = verifier.verify(etree.fromstring(etree.tostring(assertion)))
    # Then every fact comes back
    assert token == SamlToken(
        assertion_id=assertion.get("ID"),
        subject="O12345",
        role="doctor",
        institution="H100200",
        method="eszig",
        not_before=T0,
        not_on_or_after=T0 + timedelta(hours=8),
        workstation="WS-07",
    )


def test_assertion_layout(issuer: AssertionIssuer) -> None:
    assertion = doctor_token(issuer)
    assert assertion.tag == f"{{{SAML2_NS}}}Assertion"
    assert assertion.get("ID").startswith("_") and assertion.get("Version") == "2.0"
    assert assertion.get("IssueInstant") == "2025-08-01T08:00:00.000Z"
    # the signature sits right after Issuer and references the assertion itself
    assert [etree.QName(c).localname for c in assertion][:3] == ["Issuer", "Signature", "Subject"]
    ref = assertion.find("ds:Signature/ds:SignedInfo/ds:Reference", NS)
    assert ref.get("URI") == "#" + assertion.get("ID")
    assert [
        t.get("Algorithm").rsplit("#", 1)[1] for t in ref.findall("ds:Transforms/ds:Transform", NS)
    ] == [
        "enveloped-signature",
        "",
    ]
    names = [
        a.get("Name") for a in assertion.findall("saml2:AttributeStatement/saml2:Attribute", NS)
    ]
    assert names == ["role", "institution", "workstation"]


@pytest.mark.parametrize("method", sorted(AUTHN_CONTEXT))
def test_each_method_has_its_own_authn_context(
    issuer: AssertionIssuer, verifier: AssertionVerifier, method: str
) -> None:
    assertion = doctor_token(issuer, method=method, workstation=None)
    ref = assertion.findtext(
        "saml2:AuthnStatement/saml2:AuthnContext/saml2:AuthnContextClassRef", namespaces=NS
    )
    assert ref == AUTHN_CONTEXT[method]
    token = verifier.verify(assertion)
    assert token.method == method and token.workstation is None
    assert len(set(AUTHN_CONTEXT.values())) == len(AUTHN_CONTEXT)


def test_unknown_method_is_refused_at_issue(issuer: AssertionIssuer) -> None:
    with pytest.raises(ValueError, match="unknown authentication method"):
        doctor_token(issuer, method="fingerprint")


# --- time window ------------------------------------------------------------------------------
def test_expired_assertion(
    issuer: AssertionIssuer, verifier: AssertionVerifier, clock: Clock
) -> None:
    clock.now = T0 + timedelta(hours=8)  # NotOnOrAfter is exclusive
    expect(FaultCode.TOKEN_EXPIRED, verifier, doctor_token(issuer))


def test_cached_assertion_still_expires(
    issuer: AssertionIssuer, verifier: AssertionVerifier, clock: Clock
) -> None:
    # Given an assertion that verified (and was cached) while valid
    assertion = doctor_token(issuer)
    verifier.verify(assertion)
    # When the clock passes NotOnOrAfter, Then the cached result does not help it
    clock.now = T0 + timedelta(hours=9)
    expect(FaultCode.TOKEN_EXPIRED, verifier, assertion)


def test_not_yet_valid_beyond_skew(
    issuer: AssertionIssuer, verifier: AssertionVerifier, clock: Clock
) -> None:
    clock.now = T0 - timedelta(seconds=30)
    verifier.verify(doctor_token(issuer))  # within the 60 s skew
    clock.now = T0 - timedelta(minutes=5)
    expect(FaultCode.TOKEN_INVALID, verifier, doctor_token(issuer))


# --- tampering --------------------------------------------------------------------------------
def test_changed_name_id(issuer: AssertionIssuer, verifier: AssertionVerifier) -> None:
    assertion = doctor_token(issuer)
    assertion.find("saml2:Subject/saml2:NameID", NS).text = "O99999"
    expect(FaultCode.TOKEN_INVALID, verifier, assertion)


def test_changed_role(issuer: AssertionIssuer, verifier: AssertionVerifier) -> None:
    assertion = doctor_token(issuer, role="institution")
    value = assertion.find(
        "saml2:AttributeStatement/saml2:Attribute[@Name='role']/saml2:AttributeValue", NS
    )
    value.text = "doctor"
    expect(FaultCode.TOKEN_INVALID, verifier, assertion)


def test_extended_validity(issuer: AssertionIssuer, verifier: AssertionVerifier) -> None:
    assertion = doctor_token(issuer)
    assertion.find("saml2:Conditions", NS).set("NotOnOrAfter", "2099-01-01T00:00:00.000Z")
    expect(FaultCode.TOKEN_INVALID, verifier, assertion)


def test_removed_signature(issuer: AssertionIssuer, verifier: AssertionVerifier) -> None:
    assertion = doctor_token(issuer)
    assertion.remove(assertion.find("ds:Signature", NS))
    expect(FaultCode.TOKEN_INVALID, verifier, assertion)


def test_assertion_from_another_sts(verifier: AssertionVerifier, tmp_path: Path) -> None:
    # Given a forger with a self-made "STS" certificate
    key, cert = make_ca("Not the STS")
    write_pem(tmp_path / "f.key", key)
    write_pem(tmp_path / "f.pem", cert)
    forger = AssertionIssuer(
        key_pem=(tmp_path / "f.key").read_bytes(), cert_pem=(tmp_path / "f.pem").read_bytes()
    )
    expect(FaultCode.TOKEN_INVALID, verifier, doctor_token(forger))


def test_signature_referencing_something_else(
    issuer: AssertionIssuer, verifier: AssertionVerifier
) -> None:
    assertion = doctor_token(issuer)
    assertion.find("ds:Signature/ds:SignedInfo/ds:Reference", NS).set("URI", "#_other")
    err = expect(FaultCode.TOKEN_INVALID, verifier, assertion)
    assert "itself" in err.message


def test_not_an_assertion(verifier: AssertionVerifier) -> None:
    expect(FaultCode.TOKEN_INVALID, verifier, etree.fromstring(b"<x/>"))


def test_comment_in_name_id_cannot_truncate_the_subject(
    issuer: AssertionIssuer, verifier: AssertionVerifier
) -> None:
    # Given a genuine assertion for "O12345" with a comment slipped into the NameID
    # (comments are outside the signature, so it still verifies)
    xml = etree.tostring(doctor_token(issuer)).replace(b">O12345<", b">O1<!-- x -->2345<")
    assertion = etree.fromstring(xml)
    assert assertion.findtext("saml2:Subject/saml2:NameID", namespaces=NS) == "O1"
    # Then the verified subject is the signed one, not the text before the comment
    assert verifier.verify(assertion).subject == "O12345"


def test_signature_checks_are_cached(
    issuer: AssertionIssuer, verifier: AssertionVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = AssertionVerifier._verify_signature
    monkeypatch.setattr(
        AssertionVerifier, "_verify_signature", lambda self, c: calls.append(1) or real(self, c)
    )
    assertion = doctor_token(issuer)
    for _ in range(3):
        verifier.verify(etree.fromstring(etree.tostring(assertion)))
    assert len(calls) == 1
    # a changed assertion is a different cache key: verified (and refused) afresh
    assertion.find("saml2:Subject/saml2:NameID", NS).text = "O99999"
    expect(FaultCode.TOKEN_INVALID, verifier, assertion)
    assert len(calls) == 2


def test_cache_is_bounded(issuer: AssertionIssuer, pki: PkiPaths, clock: Clock) -> None:
    verifier = AssertionVerifier(cert_pem=pki.sts_cert.read_bytes(), clock=clock, cache_size=2)
    for subject in ("O1", "O2", "O3", "O4"):
        verifier.verify(doctor_token(issuer, subject=subject))
    assert len(verifier._cache) == 2


# --- inside a signed envelope -------------------------------------------------------------------
@pytest.mark.parametrize(
    "envelope_xml",
    [
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<soap:Body><op xmlns="urn:x">1</op></soap:Body></soap:Envelope>',
        # the envelope already binds the SAML and ds namespaces to other prefixes
        b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"'
        b' xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion"'
        b' xmlns:dsig="http://www.w3.org/2000/09/xmldsig#" xmlns="urn:default">'
        b"<S:Header/><S:Body><op>1</op></S:Body></S:Envelope>",
    ],
    ids=["plain", "conflicting-prefixes"],
)
def test_assertion_survives_a_signed_envelope_round_trip(
    pki: PkiPaths, issuer: AssertionIssuer, envelope_xml: bytes
) -> None:
    # Given a worker that signs a request carrying a doctor's assertion
    now = datetime.now(timezone.utc)
    assertion = doctor_token(issuer, now=now)
    signer = WsseSigner(
        key_pem=pki.institution_key.read_bytes(), cert_pem=pki.institution_cert.read_bytes()
    )
    data = signer.sign_to_bytes(etree.fromstring(envelope_xml), assertion=assertion)
    # When the simulator parses the bytes, checks the envelope, then the assertion
    envelope = etree.fromstring(data)
    message = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()]).verify(envelope)
    token = AssertionVerifier(cert_pem=pki.sts_cert.read_bytes()).verify(message.assertion)
    # Then both signatures hold and the token is the doctor's
    assert message.institution_id == "H100200"
    assert token.subject == "O12345" and token.institution == "H100200"
    assert etree.tostring(message.assertion, method="c14n", exclusive=True) == etree.tostring(
        assertion, method="c14n", exclusive=True
    )
    # and the caller's assertion element was copied, not moved
    assert assertion.getparent() is None


def test_assertion_survives_the_one_parse_signing_path(pki: PkiPaths, issuer: AssertionIssuer) -> None:
    # Given a worker that signs a service call the way EesztClient does (sign_operation)
    assertion = doctor_token(issuer, now=datetime.now(timezone.utc))
    signer = WsseSigner(
        key_pem=pki.institution_key.read_bytes(), cert_pem=pki.institution_cert.read_bytes()
    )
    data = signer.sign_operation('<op xmlns="urn:x">1</op>', assertion=assertion)
    # When the simulator checks the envelope, then the STS's signature on the assertion
    message = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()]).verify(
        etree.fromstring(data))
    token = AssertionVerifier(cert_pem=pki.sts_cert.read_bytes()).verify(message.assertion)
    # Then both hold
    assert message.institution_id == "H100200"
    assert token.subject == "O12345" and token.institution == "H100200"
