"""The eSZIG two-factor login over real HTTPS: eID package -> eID server -> rID -> STS -> SAML.

Given a real `eeszt-gw simulator` subprocess, the demo PKI and its virtual cards (the card's key
signs the nonce directly with `cryptography`: no card, no PC/SC), when the gateway's client asks
for a package and a card client talks to the eID server, then the doctor gets a SAML token that
eRecept accepts, and every refusal carries its own code.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from schemas.soap import FaultCode
from simulator.eid import EidKey, EidPackage, RidClaims, b64url_decode
from simulator.pki import PkiPaths, issue_card_certificate, make_ca
from simulator.saml import AssertionVerifier
from tests import samples
from tests.conftest import start_simulator, stop_simulator
from tests.institutions import client_for, mint_institution
from workers.client.client import ClientFiles, EesztClient
from workers.errors import ServiceRejected
from workers.client.soap import build_eid_package_request, encode_rid_package, parse_eid_package
from workers.client.transport import Timeouts

pytestmark = pytest.mark.integration


# --- helpers ------------------------------------------------------------------------------------
@dataclass
class Card:
    user_id: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    serial: str

    @property
    def cert_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()


def card_of(pki: PkiPaths, user_id: str, users: list[dict[str, Any]]) -> Card:
    d = pki.directory / "cards"
    key = load_pem_private_key((d / f"{user_id}.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((d / f"{user_id}.pem").read_bytes())
    serial = next(u["card_serial"] for u in users if u["user_id"] == user_id)
    return Card(user_id, key, cert, serial)


def nonce_of(package: str) -> bytes:
    claims = json.loads(b64url_decode(package.split(".")[0]))
    return base64.b64decode(claims["nonce"])


def sign_nonce(key: ec.EllipticCurvePrivateKey, nonce: bytes) -> str:
    return base64.b64encode(key.sign(nonce, ec.ECDSA(hashes.SHA256()))).decode()


def eid_call(sim, pki: PkiPaths, method: str, path: str, payload: Any = None,
             raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """HTTPS to the eID server: server-auth only, no client certificate."""
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    req = urllib.request.Request(sim.eid_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def authenticate(sim, pki, package: str, card: Card, *, nonce: bytes | None = None
                 ) -> tuple[int, dict[str, Any]]:
    return eid_call(sim, pki, "POST", "/eid/authenticate", {
        "package": package, "card_certificate": card.cert_b64,
        "signature": sign_nonce(card.key, nonce if nonce is not None else nonce_of(package))})


def admin_error(sim, method: str, path: str, payload: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(urllib.error.HTTPError) as exc:
        sim.admin(method, path, payload)
    return exc.value.code, json.loads(exc.value.read())


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture()
def sim(simulator):
    simulator.reset(duplicates="naive")
    return simulator


@pytest.fixture(scope="module")
def client(simulator, pki):
    c = EesztClient(base_url=simulator.base_url, files=ClientFiles.from_pki_dir(pki.directory),
                    timeouts=Timeouts(connect=5, read=10))
    yield c
    c.close()


@pytest.fixture(scope="module")
def eid_key(pki) -> EidKey:
    return EidKey.from_pem(pki.eid_key.read_bytes())


@pytest.fixture(scope="module")
def saml(pki) -> AssertionVerifier:
    return AssertionVerifier(cert_pem=pki.sts_cert.read_bytes())


def login(sim, pki, client, users, i: int) -> tuple[str, Card]:
    """Package + card: the rID of demo doctor ``i``."""
    u = users[i]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    status, body = authenticate(sim, pki, package, card_of(pki, u["user_id"], users))
    assert status == 200, body
    return body["rid"], card_of(pki, u["user_id"], users)


# --- the whole flow ---------------------------------------------------------------------------------
def test_eszig_login_gives_a_doctor_token_that_erecept_accepts(sim, pki, client, demo_users, saml):
    u = demo_users[0]
    before = datetime.now(timezone.utc)
    # Given an eID package asked for in the doctor's name
    package, expires_at = client.request_eid_package(user_id=u["user_id"],
                                                     workstation=u["workstation"])
    assert timedelta(seconds=110) < expires_at - before < timedelta(seconds=130)
    # When the card signs the nonce and the eID server checks it
    card = card_of(pki, u["user_id"], demo_users)
    status, body = authenticate(sim, pki, package, card)
    assert status == 200, body
    rid = body["rid"]
    claims = json.loads(b64url_decode(rid.split(".")[0]))
    assert (claims["user_id"], claims["card_serial"], claims["institution"]) == (
        u["user_id"], card.serial, "H100200")
    # And the rID is exchanged at the STS
    issued = client.issue_token(method="eszig", user_id=u["user_id"],
                                rid_package=encode_rid_package(rid))
    # Then the SAML token is the doctor's, by eSZIG, from the package's workstation
    token = saml.verify(issued.assertion)
    assert (token.subject, token.role, token.method, token.institution, token.workstation) == (
        u["user_id"], "doctor", "eszig", "H100200", u["workstation"])
    # And eRecept accepts it
    result = client.submit(samples.prescription(user_id=u["user_id"]), issued.assertion)
    assert result.version == 1 and result.eeszt_id
    stats = sim.stats()
    assert stats["sts_issues"] == {"eszig": 1}
    assert stats["eid"] == {"packages_issued": 1,
                            "authentications": {"ok": 1, "failed": {}},
                            "rids_redeemed": 1, "rids_refused": {}}


def test_eid_server_needs_no_client_certificate_and_answers_health(sim, pki):
    assert eid_call(sim, pki, "GET", "/eid/health") == (200, {"status": "ok"})


def test_eid_server_refuses_a_body_that_is_not_json(sim, pki):
    status, body = eid_call(sim, pki, "POST", "/eid/authenticate", raw=b"not json")
    assert (status, body["code"]) == (400, "bad_request")


# --- step 1 refusals ----------------------------------------------------------------------------------
def test_package_for_an_unknown_user_or_another_institutions_user_fails_alike(sim, pki, client,
                                                                                demo_users,
                                                                                tmp_path):
    with pytest.raises(ServiceRejected) as unknown:
        client.request_eid_package(user_id="O99999", workstation="WS-01")
    assert (unknown.value.code, unknown.value.field) == (FaultCode.AUTH_FAILED.value, "UserId")

    # a qualified certificate of another institution (over that institution's own access
    # certificate: the simulator ties the two) asks for this institution's doctor
    other_client = client_for(sim.base_url, mint_institution(
        pki, tmp_path / "other", institution_id="H999999", name="Other"))
    env = build_eid_package_request(user_id=demo_users[0]["user_id"], workstation="WS-01")
    resp = other_client.transport.post("/sts", other_client.signer.sign_to_bytes(env))
    other_client.close()
    with pytest.raises(ServiceRejected) as foreign:
        parse_eid_package(resp.status, resp.body)
    assert (foreign.value.code, foreign.value.field) == (FaultCode.AUTH_FAILED.value, "UserId")
    # the same message, apart from the user id: no user enumeration
    assert str(unknown.value).replace("O99999", "X") == str(foreign.value).replace(
        demo_users[0]["user_id"], "X")


# --- step 2 refusals: the eID server ------------------------------------------------------------------
def test_expired_package_is_refused(sim, pki, demo_users, eid_key):
    u = demo_users[1]
    past = datetime.now(timezone.utc) - timedelta(minutes=10)
    nonce = b"\x01" * 32
    package = eid_key.sign(EidPackage(package_id=str(uuid.uuid4()), user_id=u["user_id"],
                                      institution="H100200", workstation=u["workstation"],
                                      nonce=nonce, issued_at=past,
                                      expires_at=past + timedelta(seconds=120)).claims())
    status, body = authenticate(sim, pki, package, card_of(pki, u["user_id"], demo_users))
    assert (status, body["code"]) == (403, "package_expired")


def test_reused_package_is_refused(sim, pki, client, demo_users):
    u = demo_users[1]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    card = card_of(pki, u["user_id"], demo_users)
    assert authenticate(sim, pki, package, card)[0] == 200
    status, body = authenticate(sim, pki, package, card)
    assert (status, body["code"]) == (403, "package_used")


def test_package_not_signed_by_the_eid_server_is_refused(sim, pki, client, demo_users):
    u = demo_users[1]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    forged = EidKey(ec.generate_private_key(ec.SECP256R1())).sign(
        json.loads(b64url_decode(package.split(".")[0])))
    card = card_of(pki, u["user_id"], demo_users)
    for bad in (forged, package.split(".")[0] + "." + forged.split(".")[1], "garbage"):
        status, body = authenticate(sim, pki, bad, card, nonce=nonce_of(package))
        assert (status, body["code"]) == (400, "package_invalid")


def test_card_from_a_foreign_ca_is_refused(sim, pki, client, demo_users):
    u = demo_users[2]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    ca_key, ca_cert = make_ca("Foreign card CA")
    real = card_of(pki, u["user_id"], demo_users)
    key, cert = issue_card_certificate(ca_key, ca_cert, holder_name="Dr. Hamis Hanna",
                                       card_serial=real.serial)
    status, body = authenticate(sim, pki, package, Card(u["user_id"], key, cert, real.serial))
    assert (status, body["code"]) == (403, "card_untrusted")


def test_expired_card_certificate_is_refused(sim, pki, client, demo_users):
    u = demo_users[2]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    real = card_of(pki, u["user_id"], demo_users)
    ca_key = load_pem_private_key(pki.card_ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.card_ca_cert.read_bytes())
    key, cert = issue_card_certificate(ca_key, ca_cert, holder_name="Dr. Régi Rita",
                                       card_serial=real.serial, key=real.key,
                                       not_after=datetime.now(timezone.utc) - timedelta(days=1))
    status, body = authenticate(sim, pki, package, Card(u["user_id"], key, cert, real.serial))
    assert (status, body["code"]) == (403, "card_untrusted")


def test_bad_nonce_signature_is_refused(sim, pki, client, demo_users):
    u = demo_users[3]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    card = card_of(pki, u["user_id"], demo_users)
    status, body = authenticate(sim, pki, package, card, nonce=b"\x00" * 32)
    assert (status, body["code"]) == (403, "bad_signature")
    # a failed attempt does not spend the package
    assert authenticate(sim, pki, package, card)[0] == 200


def test_card_not_activated_is_refused_until_activated(sim, pki, client, demo_users):
    u = demo_users[4]
    card = card_of(pki, u["user_id"], demo_users)
    assert sim.admin("PATCH", f"/admin/cards/{card.serial}", {"activated": False}) == {
        "card_serial": card.serial, "user_id": u["user_id"], "activated": False}
    listed = {c["card_serial"]: c for c in sim.admin("GET", "/admin/cards")["cards"]}
    assert listed[card.serial]["activated"] is False
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    status, body = authenticate(sim, pki, package, card)
    assert (status, body["code"]) == (403, "card_not_activated")
    sim.admin("PATCH", f"/admin/cards/{card.serial}", {"activated": True})
    assert authenticate(sim, pki, package, card)[0] == 200


def test_card_of_another_user_is_refused(sim, pki, client, demo_users):
    a, b = demo_users[5], demo_users[6]
    package, _ = client.request_eid_package(user_id=a["user_id"], workstation=a["workstation"])
    status, body = authenticate(sim, pki, package, card_of(pki, b["user_id"], demo_users))
    assert (status, body["code"]) == (403, "card_not_registered")
    stats = sim.stats()["eid"]
    assert stats["authentications"] == {"ok": 0, "failed": {"card_not_registered": 1}}


# --- step 3 refusals: the STS -------------------------------------------------------------------------
def _sts_refusal(client, user_id: str, rid: str) -> ServiceRejected:
    with pytest.raises(ServiceRejected) as exc:
        client.issue_token(method="eszig", user_id=user_id, rid_package=encode_rid_package(rid))
    assert (exc.value.code, exc.value.field) == (FaultCode.AUTH_FAILED.value, "RidPackage")
    return exc.value


def test_rid_replay_at_the_sts_is_refused(sim, pki, client, demo_users):
    u = demo_users[7]
    rid, _ = login(sim, pki, client, demo_users, 7)
    client.issue_token(method="eszig", user_id=u["user_id"], rid_package=encode_rid_package(rid))
    assert "replayed" in str(_sts_refusal(client, u["user_id"], rid))
    stats = sim.stats()
    assert stats["eid"]["rids_redeemed"] == 1 and stats["eid"]["rids_refused"] == {"replayed": 1}
    assert stats["sts_issues"] == {"eszig": 1}


def test_expired_rid_is_refused(sim, demo_users, client, eid_key):
    u = demo_users[7]
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    rid = eid_key.sign(RidClaims(rid_id=str(uuid.uuid4()), user_id=u["user_id"],
                                 institution="H100200", package_id=str(uuid.uuid4()),
                                 card_serial=u["card_serial"], workstation=u["workstation"],
                                 issued_at=past, expires_at=past + timedelta(seconds=60)).claims())
    assert "expired" in str(_sts_refusal(client, u["user_id"], rid))


def test_rid_of_one_user_presented_for_another_is_refused(sim, pki, client, demo_users):
    rid, _ = login(sim, pki, client, demo_users, 8)
    assert "wrong user" in str(_sts_refusal(client, demo_users[9]["user_id"], rid))
    # not spent by the refusal: its own user can still redeem it
    client.issue_token(method="eszig", user_id=demo_users[8]["user_id"],
                       rid_package=encode_rid_package(rid))


def test_package_is_not_an_rid(sim, client, demo_users):
    u = demo_users[8]
    package, _ = client.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
    assert "invalid" in str(_sts_refusal(client, u["user_id"], package))


# --- the registry on the admin port -----------------------------------------------------------------
def test_admin_lists_cards_and_refuses_bad_changes_naming_the_field(sim, demo_users):
    cards = sim.admin("GET", "/admin/cards")["cards"]
    assert {(c["user_id"], c["card_serial"], c["activated"]) for c in cards} == {
        (u["user_id"], u["card_serial"], True) for u in demo_users}
    serial = demo_users[0]["card_serial"]
    status, body = admin_error(sim, "PATCH", "/admin/cards/EK00000000", {"activated": False})
    assert (status, body["errors"][0]["field"]) == (404, "card_serial")
    for payload, field in (({"activated": "no"}, "activated"), ({}, "activated"),
                           ({"activated": True, "user_id": "O1"}, "user_id"), ([1], "body")):
        status, body = admin_error(sim, "PATCH", f"/admin/cards/{serial}", payload)
        assert (status, body["errors"][0]["field"]) == (422, field)


def test_reset_restores_card_activation(sim, demo_users):
    serial = demo_users[0]["card_serial"]
    sim.admin("PATCH", f"/admin/cards/{serial}", {"activated": False})
    sim.admin("POST", "/admin/reset")
    listed = {c["card_serial"]: c["activated"] for c in sim.admin("GET", "/admin/cards")["cards"]}
    assert listed[serial] is True


# --- lifetimes and restarts (own simulators) ----------------------------------------------------------
def _client_for(s, pki) -> EesztClient:
    return EesztClient(base_url=s.base_url, files=ClientFiles.from_pki_dir(pki.directory),
                       timeouts=Timeouts(connect=5, read=10))


def test_lifetime_flags_expire_packages_and_rids(pki, demo_users, tmp_path):
    s = start_simulator(pki, tmp_path, "--eid-package-ttl-s", "1", "--rid-ttl-s", "1")
    c = _client_for(s, pki)
    try:
        u = demo_users[0]
        card = card_of(pki, u["user_id"], demo_users)
        package, expires_at = c.request_eid_package(user_id=u["user_id"],
                                                    workstation=u["workstation"])
        assert expires_at - datetime.now(timezone.utc) < timedelta(seconds=1.5)
        time.sleep(1.2)
        assert authenticate(s, pki, package, card)[1]["code"] == "package_expired"
        package, _ = c.request_eid_package(user_id=u["user_id"], workstation=u["workstation"])
        status, body = authenticate(s, pki, package, card)
        assert status == 200, body
        time.sleep(1.2)
        assert "expired" in str(_sts_refusal(c, u["user_id"], body["rid"]))
    finally:
        c.close()
        stop_simulator(s)


def test_a_restart_cannot_replay_an_rid(pki, demo_users, tmp_path):
    db = tmp_path / "shared.sqlite"
    u = demo_users[1]
    first = start_simulator(pki, tmp_path, "--db", str(db))
    c = _client_for(first, pki)
    try:
        rid, _ = login(first, pki, c, demo_users, 1)
        c.issue_token(method="eszig", user_id=u["user_id"], rid_package=encode_rid_package(rid))
    finally:
        c.close()
        stop_simulator(first)
    second = start_simulator(pki, tmp_path, "--db", str(db))
    c = _client_for(second, pki)
    try:
        assert "replayed" in str(_sts_refusal(c, u["user_id"], rid))
    finally:
        c.close()
        stop_simulator(second)
