"""WS-Security: the worker's signer against the simulator's verifier."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import simulator.wsse as sim_wsse
from schemas.soap import (
    BASE64_ENCODING,
    DS_NS,
    EXC_C14N,
    SAML2_NS,
    SOAP11_NS,
    WSSE_NS,
    WSU_NS,
    X509_TOKEN_TYPE,
    FaultCode,
)
from simulator.pki import PkiPaths, init_pki, issue_certificate, make_ca, write_pem
from simulator.wsse import VerifiedMessage, WsseError, WsseVerifier
from workers.client.wsse import WsseSigner, format_timestamp

NS = {"soap": SOAP11_NS, "wsse": WSSE_NS, "wsu": WSU_NS, "ds": DS_NS, "saml2": SAML2_NS}
WSU_ID = f"{{{WSU_NS}}}Id"
CA = tuple[rsa.RSAPrivateKey, x509.Certificate]
ENVELOPE = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    '<soap:Body><m:receptRogzites xmlns:m="urn:eeszt-gateway:contract:v1:erecept">'
    "<m:taj>123456788</m:taj><m:note>{note}</m:note></m:receptRogzites></soap:Body>"
    "</soap:Envelope>"
)


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("wsse") / "pki")


@pytest.fixture(scope="module")
def signer(pki: PkiPaths) -> WsseSigner:
    return WsseSigner(
        key_pem=pki.institution_key.read_bytes(), cert_pem=pki.institution_cert.read_bytes()
    )


@pytest.fixture()
def verifier(pki: PkiPaths) -> WsseVerifier:
    return WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()])


@pytest.fixture(scope="module")
def qualified_ca(pki: PkiPaths) -> CA:
    key = load_pem_private_key(pki.qualified_ca_key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, x509.load_pem_x509_certificate(pki.qualified_ca_cert.read_bytes())


def envelope(note: str = "hello") -> etree._Element:
    return etree.fromstring(ENVELOPE.format(note=note).encode())


def reparse(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element))


def signed(signer: WsseSigner, **kwargs: Any) -> etree._Element:
    return reparse(signer.sign(envelope(), **kwargs))


def pem_pair(tmp_path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> tuple[bytes, bytes]:
    write_pem(tmp_path / "x.key", key)
    write_pem(tmp_path / "x.pem", cert)
    return (tmp_path / "x.key").read_bytes(), (tmp_path / "x.pem").read_bytes()


def expect(code: FaultCode, verifier: WsseVerifier, env: etree._Element) -> WsseError:
    with pytest.raises(WsseError) as info:
        verifier.verify(env)
    assert info.value.code is code, info.value
    assert info.value.message
    return info.value


def security(env: etree._Element) -> etree._Element:
    return env.find("soap:Header/wsse:Security", NS)


# --- the happy path and the layout --------------------------------------------------------------
def test_signed_envelope_verifies_after_serialization(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    # Given an envelope signed by the institution key
    data = signer.sign_to_bytes(envelope())
    assert data.startswith(b"<?xml")
    # When the simulator parses and verifies the bytes
    env = etree.fromstring(data)
    msg = verifier.verify(env)
    # Then it learns the institution and gets the Envelope's own Body
    assert isinstance(msg, VerifiedMessage)
    assert msg.institution_id == "H100200"
    assert msg.body is env.find("soap:Body", NS)
    assert msg.assertion is None
    assert msg.expires - msg.created == timedelta(seconds=300)
    assert msg.signer_cert.serial_number == signer.certificate.serial_number


def test_signed_envelope_verifies_in_memory_without_a_reparse(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    assert verifier.verify(signer.sign(envelope())).institution_id == "H100200"


def test_security_header_layout(signer: WsseSigner) -> None:
    # Given a signed envelope
    env = signed(signer)
    sec = security(env)
    # Then the header holds Timestamp, BinarySecurityToken, Signature in this order
    assert [etree.QName(c).localname for c in sec] == [
        "Timestamp",
        "BinarySecurityToken",
        "Signature",
    ]
    assert sec.get(f"{{{SOAP11_NS}}}mustUnderstand") == "1"
    ts, bst, sig = sec
    assert bst.get("ValueType") == X509_TOKEN_TYPE
    assert bst.get("EncodingType") == BASE64_ENCODING
    created, expires = (
        ts.findtext("wsu:Created", namespaces=NS),
        ts.findtext("wsu:Expires", namespaces=NS),
    )
    assert created.endswith("Z") and len(created) == len("2025-01-01T00:00:00.000Z")
    assert expires > created
    # and the signature covers exactly the Body and the Timestamp, with the agreed algorithms
    body = env.find("soap:Body", NS)
    refs = sig.findall("ds:SignedInfo/ds:Reference", NS)
    assert [r.get("URI") for r in refs] == [f"#{body.get(WSU_ID)}", f"#{ts.get(WSU_ID)}"]
    for ref in refs:
        assert [t.get("Algorithm") for t in ref.findall("ds:Transforms/ds:Transform", NS)] == [
            EXC_C14N
        ]
        assert ref.find("ds:DigestMethod", NS).get("Algorithm").endswith("#sha256")
    assert sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm") == EXC_C14N
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith("rsa-sha256")
    str_ref = sig.find("ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference", NS)
    assert str_ref.get("URI") == f"#{bst.get(WSU_ID)}"
    assert str_ref.get("ValueType") == X509_TOKEN_TYPE


def test_body_id_uses_the_wsu_prefix(signer: WsseSigner) -> None:
    data = signer.sign_to_bytes(envelope())
    assert b'<soap:Body xmlns:wsu="' in data and b"wsu:Id=" in data


def test_signing_again_replaces_the_security_header(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    # Given an envelope that was signed once (a retry re-signs with a fresh Timestamp)
    env = signer.sign(envelope(), now=datetime.now(timezone.utc) - timedelta(hours=1))
    # When it is signed again
    env = reparse(signer.sign(env))
    # Then there is one Security header and it verifies
    assert len(env.findall("soap:Header/wsse:Security", NS)) == 1
    verifier.verify(env)


def test_signer_rejects_a_key_that_does_not_match_the_certificate(pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="does not match"):
        WsseSigner(key_pem=pki.sts_key.read_bytes(), cert_pem=pki.institution_cert.read_bytes())


def test_signer_never_shows_its_key(pki: PkiPaths, signer: WsseSigner) -> None:
    with pytest.raises(ValueError) as info:
        WsseSigner(
            key_pem=b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
            cert_pem=pki.institution_cert.read_bytes(),
        )
    assert "AAAA" not in str(info.value)
    assert "PRIVATE" not in repr(signer)


def test_signer_rejects_something_that_is_not_an_envelope(signer: WsseSigner) -> None:
    with pytest.raises(ValueError):
        signer.sign(etree.fromstring(b"<a/>"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(note=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200))
def test_any_body_text_survives_the_round_trip(
    signer: WsseSigner, verifier: WsseVerifier, note: str
) -> None:
    env = envelope()
    env.find(".//{*}note").text = note
    verifier.verify(etree.fromstring(signer.sign_to_bytes(env)))


# --- the one-parse path: sign_operation -----------------------------------------------------
OPERATION = (
    '<m:receptRogzites xmlns:m="urn:eeszt-gateway:contract:v1:erecept">'
    "<m:taj>123456788</m:taj><m:note>{note}</m:note></m:receptRogzites>"
)


def saml_assertion(assertion_id: str) -> etree._Element:
    """An assertion inside an answer that binds other prefixes, as the STS client gets it."""
    answer = etree.fromstring(
        f'<r:Answer xmlns:r="urn:answer" xmlns:ds="{DS_NS}"><saml2:Assertion xmlns:saml2='
        f'"{SAML2_NS}" ID="{assertion_id}"><saml2:Issuer>sts</saml2:Issuer><ds:Signature/>'
        "</saml2:Assertion></r:Answer>".encode())
    return answer[0]


def layout(env: etree._Element) -> list[tuple[str, list[str]]]:
    return [(el.tag, sorted(el.attrib)) for el in env.iter(etree.Element)]


def test_sign_operation_writes_the_envelope_sign_writes(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    # Given the same operation signed both ways at the same moment
    now = datetime.now(timezone.utc)
    fast = etree.fromstring(signer.sign_operation(OPERATION.format(note="hi"), now=now))
    slow = etree.fromstring(signer.sign_to_bytes(envelope("hi"), now=now))
    # Then the trees match element for element (only Ids and signature values differ)
    assert layout(fast) == layout(slow)
    assert security(fast)[0].findtext("wsu:Expires", namespaces=NS) == \
        security(slow)[0].findtext("wsu:Expires", namespaces=NS)
    # and the simulator accepts it
    msg = verifier.verify(fast)
    assert msg.institution_id == "H100200" and msg.assertion is None


def test_sign_operation_puts_the_assertion_before_the_signature_unchanged(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    assertion = saml_assertion("_a1")
    env = etree.fromstring(signer.sign_operation(OPERATION.format(note="x"), assertion=assertion))
    assert [etree.QName(c).localname for c in security(env)] == [
        "Timestamp", "BinarySecurityToken", "Assertion", "Signature"]
    msg = verifier.verify(env)
    assert etree.tostring(msg.assertion, method="c14n", exclusive=True) == etree.tostring(
        assertion, method="c14n", exclusive=True)
    assert assertion.getparent().tag == "{urn:answer}Answer"  # the caller's tree is untouched


def test_sign_operation_embeds_each_token_as_itself(signer: WsseSigner) -> None:
    # the serialized assertion is kept per token: a second token must not get the first's bytes
    first, second = saml_assertion("_first"), saml_assertion("_second")
    for token in (first, second, first):
        env = etree.fromstring(signer.sign_operation(OPERATION.format(note="x"), assertion=token))
        assert security(env).find("saml2:Assertion", NS).get("ID") == token.get("ID")


def test_sign_operation_refuses_an_operation_that_is_not_xml(signer: WsseSigner) -> None:
    with pytest.raises(ValueError, match="not well-formed"):
        signer.sign_operation("<m:open xmlns:m='urn:x'>")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(note=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200))
def test_any_body_text_survives_sign_operation(
    signer: WsseSigner, verifier: WsseVerifier, note: str
) -> None:
    env = etree.fromstring(signer.sign_operation(OPERATION.format(note=escape(note))))
    verifier.verify(env)
    assert env.findtext(".//{*}note") == note


# --- rejections ------------------------------------------------------------------------------
def test_tampered_body_is_rejected(signer: WsseSigner, verifier: WsseVerifier) -> None:
    # Given a signed envelope whose Body is changed afterwards
    env = signed(signer)
    env.find(".//{*}taj").text = "999999999"
    # Then the signature no longer verifies
    expect(FaultCode.SIGNATURE_INVALID, verifier, env)


def test_tampered_timestamp_is_rejected(signer: WsseSigner, verifier: WsseVerifier) -> None:
    # Given a signed envelope whose Expires is pushed 10 minutes later (still fresh)
    env = signed(signer)
    expires = security(env).find("wsu:Timestamp/wsu:Expires", NS)
    later = datetime.fromisoformat(expires.text) + timedelta(minutes=10)
    expires.text = format_timestamp(later)
    # Then the Timestamp's digest no longer matches
    expect(FaultCode.SIGNATURE_INVALID, verifier, env)


def test_missing_security_header(verifier: WsseVerifier) -> None:
    expect(FaultCode.SECURITY_HEADER_MISSING, verifier, envelope())


def test_removed_signature(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    sec = security(env)
    sec.remove(sec.find("ds:Signature", NS))
    expect(FaultCode.SIGNATURE_MISSING, verifier, env)


def test_removed_timestamp(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    sec = security(env)
    sec.remove(sec.find("wsu:Timestamp", NS))
    expect(FaultCode.TIMESTAMP_MISSING, verifier, env)


def test_timestamp_older_than_skew_is_stale(signer: WsseSigner, verifier: WsseVerifier) -> None:
    # Given an envelope signed 11 minutes ago (expired 6 minutes ago; skew is 5)
    env = signed(signer, now=datetime.now(timezone.utc) - timedelta(minutes=11))
    expect(FaultCode.TIMESTAMP_STALE, verifier, env)


def test_timestamp_within_skew_is_accepted(signer: WsseSigner, verifier: WsseVerifier) -> None:
    # expired 3 minutes ago, but the skew allowance is 5 minutes
    verifier.verify(signed(signer, now=datetime.now(timezone.utc) - timedelta(minutes=8)))


def test_timestamp_from_the_future_is_stale(signer: WsseSigner, pki: PkiPaths) -> None:
    # Given a verifier whose clock lags ten minutes behind the client
    lagging = WsseVerifier(
        trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()],
        clock=lambda: datetime.now(timezone.utc) - timedelta(minutes=10),
    )
    expect(FaultCode.TIMESTAMP_STALE, lagging, signed(signer))


def test_certificate_from_a_foreign_ca_is_untrusted(verifier: WsseVerifier, tmp_path: Path) -> None:
    # Given a certificate with the right name but from another CA
    ca_key, ca_cert = make_ca("Foreign Qualified CA")
    key, cert = issue_certificate(
        ca_key, ca_cert, common_name="Demo Kórház HIS", organization_identifier="H100200"
    )
    key_pem, cert_pem = pem_pair(tmp_path, key, cert)
    foreign = WsseSigner(key_pem=key_pem, cert_pem=cert_pem)
    # Then its perfectly valid signature is refused
    expect(FaultCode.CERT_UNTRUSTED, verifier, signed(foreign))


def test_expired_certificate(verifier: WsseVerifier, qualified_ca: CA, tmp_path: Path) -> None:
    # Given a certificate from the trusted CA that expired yesterday
    ca_key, ca_cert = qualified_ca
    key, cert = issue_certificate(
        ca_key,
        ca_cert,
        common_name="Demo Kórház HIS",
        organization_identifier="H100200",
        not_after=datetime.now(timezone.utc) - timedelta(days=1),
    )
    key_pem, cert_pem = pem_pair(tmp_path, key, cert)
    expect(FaultCode.CERT_EXPIRED, verifier, signed(WsseSigner(key_pem=key_pem, cert_pem=cert_pem)))


def test_missing_binary_security_token(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    sec = security(env)
    sec.remove(sec.find("wsse:BinarySecurityToken", NS))
    expect(FaultCode.CERT_UNTRUSTED, verifier, env)


def test_swapped_binary_security_token_breaks_the_signature(
    signer: WsseSigner,
    verifier: WsseVerifier,
    qualified_ca: CA,
    tmp_path: Path,
) -> None:
    # Given another trusted certificate put in place of the signer's
    ca_key, ca_cert = qualified_ca
    key, cert = issue_certificate(
        ca_key, ca_cert, common_name="Other HIS", organization_identifier="H555"
    )
    _, cert_pem = pem_pair(tmp_path, key, cert)
    other = signed(WsseSigner(key_pem=pem_pair(tmp_path, key, cert)[0], cert_pem=cert_pem))
    env = signed(signer)
    bst = security(env).find("wsse:BinarySecurityToken", NS)
    bst.text = security(other).find("wsse:BinarySecurityToken", NS).text
    # Then the signature does not verify with that certificate's key
    expect(FaultCode.SIGNATURE_INVALID, verifier, env)


def test_intermediate_ca_is_followed(pki: PkiPaths, qualified_ca: CA, tmp_path: Path) -> None:
    # Given a signer certified by an intermediate under the trusted root
    root_key, root_cert = qualified_ca
    inter_key, inter_cert = make_ca("Qualified Issuing CA", issuer=(root_key, root_cert))
    key, cert = issue_certificate(
        inter_key, inter_cert, common_name="HIS", organization_identifier="H7"
    )
    key_pem, cert_pem = pem_pair(tmp_path, key, cert)
    env = signed(WsseSigner(key_pem=key_pem, cert_pem=cert_pem))
    write_pem(tmp_path / "inter.pem", inter_cert)
    inter_pem = (tmp_path / "inter.pem").read_bytes()
    # Then it is untrusted without the intermediate, trusted with it
    plain = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()])
    expect(FaultCode.CERT_UNTRUSTED, plain, env)
    chained = WsseVerifier(
        trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()], intermediate_pems=[inter_pem]
    )
    assert chained.verify(env).institution_id == "H7"


# --- signature wrapping ------------------------------------------------------------------------
def test_signed_body_moved_into_the_header_and_replaced(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    # Given a signed envelope where the attacker parks the signed Body in a header
    # and puts an unsigned Body of their own in its place
    env = signed(signer)
    header = env.find("soap:Header", NS)
    original = env.find("soap:Body", NS)
    wrapper = etree.SubElement(header, "{urn:evil}Wrapper")
    env.remove(original)
    wrapper.append(original)
    evil = etree.SubElement(env, f"{{{SOAP11_NS}}}Body")
    etree.SubElement(evil, "{urn:evil}transfer").text = "everything"
    # Then the signed element is not the Body the service would read
    expect(FaultCode.SIGNATURE_SCOPE, verifier, env)


def test_evil_body_reusing_the_signed_id(signer: WsseSigner, verifier: WsseVerifier) -> None:
    # Given the same attack, but the evil Body copies the signed Body's wsu:Id
    env = signed(signer)
    header = env.find("soap:Header", NS)
    original = env.find("soap:Body", NS)
    evil = copy.deepcopy(original)
    evil.find(".//{*}taj").text = "999999999"
    wrapper = etree.SubElement(header, "{urn:evil}Wrapper")
    env.replace(original, evil)
    wrapper.append(original)
    env = reparse(env)
    # Then the duplicate Id is refused before xmlsec can pick either element
    err = expect(FaultCode.SIGNATURE_SCOPE, verifier, env)
    assert "2 elements" in err.message


def test_second_body(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    etree.SubElement(env, f"{{{SOAP11_NS}}}Body").text = "more"
    expect(FaultCode.SIGNATURE_SCOPE, verifier, env)


def test_duplicate_xml_id_for_the_timestamp(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    ts_id = security(env).find("wsu:Timestamp", NS).get(WSU_ID)
    etree.SubElement(env.find("soap:Header", NS), "{urn:evil}x").set(
        "{http://www.w3.org/XML/1998/namespace}id", ts_id
    )
    expect(FaultCode.SIGNATURE_SCOPE, verifier, reparse(env))


def test_signature_that_does_not_cover_the_body(signer: WsseSigner, verifier: WsseVerifier) -> None:
    env = signed(signer)
    signed_info = security(env).find("ds:Signature/ds:SignedInfo", NS)
    signed_info.remove(signed_info.findall("ds:Reference", NS)[0])
    err = expect(FaultCode.SIGNATURE_SCOPE, verifier, env)
    assert "Body" in err.message


def test_reference_with_an_xpath_transform_is_refused(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    env = signed(signer)
    transforms = security(env).find("ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms", NS)
    etree.SubElement(
        transforms,
        f"{{{DS_NS}}}Transform",
        Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116",
    )
    expect(FaultCode.SIGNATURE_SCOPE, verifier, env)


# --- caching -----------------------------------------------------------------------------------
def test_each_certificate_is_chain_checked_once(
    signer: WsseSigner, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fresh verifier that counts chain checks
    calls = []
    real = sim_wsse._issued_by
    monkeypatch.setattr(sim_wsse, "_issued_by", lambda c, i: calls.append(1) or real(c, i))
    verifier = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()])
    # When three messages from the same certificate arrive
    for _ in range(3):
        verifier.verify(signed(signer))
    # Then the certificate was checked once
    assert len(calls) == 1


def test_certificate_cache_is_bounded(
    signer: WsseSigner,
    pki: PkiPaths,
    qualified_ca: CA,
    tmp_path: Path,
) -> None:
    verifier = WsseVerifier(trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()], cache_size=1)
    ca_key, ca_cert = qualified_ca
    key, cert = issue_certificate(ca_key, ca_cert, common_name="Second HIS")
    key_pem, cert_pem = pem_pair(tmp_path, key, cert)
    other = WsseSigner(key_pem=key_pem, cert_pem=cert_pem)
    for s in (signer, other, signer):
        verifier.verify(signed(s))
    assert len(verifier._cache) == 1


def test_expiry_is_checked_even_for_a_cached_certificate(signer: WsseSigner, pki: PkiPaths) -> None:
    # Given a verifier that has cached the signer's certificate
    now = [datetime.now(timezone.utc)]
    verifier = WsseVerifier(
        trusted_ca_pems=[pki.qualified_ca_cert.read_bytes()], clock=lambda: now[0]
    )
    verifier.verify(signed(signer))
    # When the clock passes the certificate's notAfter
    now[0] = signer.certificate.not_valid_after_utc + timedelta(days=1)
    # Then the cached certificate is refused as expired
    expect(FaultCode.CERT_EXPIRED, verifier, signed(signer, now=now[0]))


def test_assertion_in_the_header_is_returned_unverified(
    signer: WsseSigner, verifier: WsseVerifier
) -> None:
    assertion = etree.fromstring(f'<saml2:Assertion xmlns:saml2="{SAML2_NS}" ID="_x"/>'.encode())
    msg = verifier.verify(signed(signer, assertion=assertion))
    assert msg.assertion is not None and msg.assertion.get("ID") == "_x"
    assert [etree.QName(c).localname for c in security(msg.body.getparent())] == [
        "Timestamp",
        "BinarySecurityToken",
        "Assertion",
        "Signature",
    ]
