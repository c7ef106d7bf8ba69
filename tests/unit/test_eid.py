"""The eID server's building blocks: package/rID signing, the checks and their codes, the card
registry, single use in SQLite, the demo cards, and the SOAP templates of EidPackageRequest."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree

from schemas.soap import STS_NS, FaultCode, contract_path
from schemas.validators import is_valid_taj
from simulator.eid import (
    EID_ERROR_STATUS,
    CardRegistry,
    EidError,
    EidKey,
    EidPackage,
    EidServer,
    RidClaims,
    RidRefused,
    TokenInvalid,
    b64url_decode,
    b64url_encode,
    card_serial_of,
)
from simulator.pki import PkiPaths, init_pki, issue_card_certificate, make_ca
from simulator.soapio import SoapFault
from simulator.store import Store
from simulator.users import UserRegistry, write_demo_users
from workers.errors import ServiceRejected
from workers.client.soap import build_eid_package_request, encode_rid_package, parse_eid_package

FIXED = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
# The tests' clock. The demo cards are valid from their creation (backdated 5 minutes), which in
# a long test run can come well after this module is imported: an hour ahead keeps NOW inside
# every certificate's validity however late the PKI fixture runs.
NOW = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)


class MemoryUsed:
    def __init__(self) -> None:
        self.spent: set[tuple[str, str]] = set()

    def is_used(self, kind: str, token_id: str) -> bool:
        return (kind, token_id) in self.spent

    def mark_used(self, kind: str, token_id: str) -> bool:
        if (kind, token_id) in self.spent:
            return False
        self.spent.add((kind, token_id))
        return True


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    paths = init_pki(tmp_path_factory.mktemp("eid") / "pki")
    write_demo_users(paths.directory / "users.json", institution="H100200", count=4)
    return paths


@pytest.fixture(scope="module")
def users_json(pki: PkiPaths) -> list[dict]:
    return json.loads((pki.directory / "users.json").read_text())["users"]


@pytest.fixture()
def server(pki: PkiPaths) -> EidServer:
    users = UserRegistry.load(pki.directory / "users.json")
    return EidServer(key=EidKey.from_pem(pki.eid_key.read_bytes()),
                     card_ca_pem=pki.card_ca_cert.read_bytes(), users=users,
                     clock=lambda: NOW)


def _card(pki: PkiPaths, user_id: str):
    key = load_pem_private_key((pki.directory / "cards" / f"{user_id}.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((pki.directory / "cards" / f"{user_id}.pem").read_bytes())
    return key, cert


def _der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _sig(key, nonce: bytes) -> str:
    return base64.b64encode(key.sign(nonce, ec.ECDSA(hashes.SHA256()))).decode()


def _auth(server: EidServer, pki: PkiPaths, package: str, nonce: bytes, user_id: str,
          used: MemoryUsed, *, key=None, cert=None, now=NOW):
    card_key, card_cert = _card(pki, user_id)
    return server.authenticate(package=package, card_certificate=_der_b64(cert or card_cert),
                               signature=_sig(key or card_key, nonce), used=used, now=now)


def _code(excinfo) -> str:
    return excinfo.value.code


# --- signing ----------------------------------------------------------------------------------------
def test_b64url_round_trip_without_padding_and_accepts_padding():
    for data in (b"", b"a", b"ab", b"abc", bytes(range(256))):
        text = b64url_encode(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data
    assert b64url_decode("YQ==") == b"a"
    with pytest.raises(ValueError):
        b64url_decode("a+b/")
    with pytest.raises(ValueError):
        b64url_decode("é")


def test_signed_token_round_trips_and_is_two_base64url_parts(pki: PkiPaths):
    key = EidKey.from_pem(pki.eid_key.read_bytes())
    token = key.sign({"typ": "rid", "x": "ő"})
    body, sig = token.split(".")
    assert json.loads(b64url_decode(body)) == {"typ": "rid", "x": "ő"}
    # the signature is ECDSA P-256 SHA-256 (DER) over the JSON bytes, by eid.pem's key
    cert = x509.load_pem_x509_certificate(pki.eid_cert.read_bytes())
    cert.public_key().verify(b64url_decode(sig), b64url_decode(body), ec.ECDSA(hashes.SHA256()))
    assert key.verify(token, typ="rid") == {"typ": "rid", "x": "ő"}


@pytest.mark.parametrize("mangle", [
    lambda t: t.split(".")[0],  # no signature
    lambda t: t + ".x",  # three parts
    lambda t: "!!!." + t.split(".")[1],  # not base64url
    lambda t: b64url_encode(b'{"typ":"rid","x":"y"}') + "." + t.split(".")[1],  # body swapped
    lambda t: t.split(".")[0] + "." + b64url_encode(b"\x30\x00"),  # signature swapped
    lambda t: "A" * 9000,  # too long
])
def test_tampered_or_malformed_tokens_are_invalid(pki: PkiPaths, mangle):
    key = EidKey.from_pem(pki.eid_key.read_bytes())
    with pytest.raises(TokenInvalid):
        key.verify(mangle(key.sign({"typ": "rid", "x": "ő"})), typ="rid")


def test_token_of_another_key_or_another_type_is_invalid(pki: PkiPaths):
    key = EidKey.from_pem(pki.eid_key.read_bytes())
    other = EidKey(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TokenInvalid, match="not the eID server's"):
        key.verify(other.sign({"typ": "rid"}), typ="rid")
    with pytest.raises(TokenInvalid, match="not an rid package"):
        key.verify(key.sign({"typ": "eid-package"}), typ="rid")


def test_eid_key_must_be_p256():
    with pytest.raises(ValueError):
        EidKey(ec.generate_private_key(ec.SECP384R1()))
    assert "ECDSA" in repr(EidKey(ec.generate_private_key(ec.SECP256R1())))


def test_package_claims_round_trip_and_repr_hides_the_nonce():
    package = EidPackage(package_id=str(uuid.uuid4()), user_id="O10001", institution="H100200",
                         workstation="WS-01", nonce=b"\xab" * 32, issued_at=FIXED,
                         expires_at=FIXED + timedelta(seconds=120))
    claims = package.claims()
    assert set(claims) == {"typ", "package_id", "user_id", "institution", "workstation",
                           "nonce", "issued_at", "expires_at"}
    assert claims["typ"] == "eid-package" and claims["expires_at"] == "2026-03-01T08:02:00.000Z"
    assert EidPackage.from_claims(claims) == package
    assert "nonce" not in repr(package) and claims["nonce"] not in repr(package)
    with pytest.raises(TokenInvalid, match="nonce"):
        EidPackage.from_claims({**claims, "nonce": base64.b64encode(b"short").decode()})
    with pytest.raises(TokenInvalid, match="expires_at"):
        EidPackage.from_claims({**claims, "expires_at": "tomorrow"})


def test_rid_claims_round_trip():
    rid = RidClaims(rid_id="r", user_id="O10001", institution="H100200", package_id="p",
                    card_serial="EK12345678", workstation="WS-01", issued_at=NOW,
                    expires_at=NOW + timedelta(seconds=60))
    assert RidClaims.from_claims(rid.claims()) == rid
    with pytest.raises(TokenInvalid, match="card_serial"):
        RidClaims.from_claims({**rid.claims(), "card_serial": ""})


# --- the eID server's checks -------------------------------------------------------------------------
def test_every_error_code_is_distinct_and_has_a_4xx_status():
    assert len(set(EID_ERROR_STATUS)) == len(EID_ERROR_STATUS)
    assert all(status in (400, 403) for status in EID_ERROR_STATUS.values())
    with pytest.raises(ValueError):
        EidError("made_up", "x")


def test_authenticate_returns_an_rid_for_the_package_user_and_card(server, pki, users_json):
    u = users_json[0]
    package, claims = server.issue_package(user_id=u["user_id"], institution="H100200",
                                           workstation="WS-07")
    assert claims.expires_at - claims.issued_at == timedelta(seconds=120)
    rid_text, rid = _auth(server, pki, package, claims.nonce, u["user_id"], MemoryUsed())
    assert (rid.user_id, rid.card_serial, rid.workstation, rid.package_id) == (
        u["user_id"], u["card_serial"], "WS-07", claims.package_id)
    assert rid.expires_at - rid.issued_at == timedelta(seconds=60)
    assert server.key.verify(rid_text, typ="rid") == rid.claims()
    assert server.counters.snapshot()["authentications"] == {"ok": 1, "failed": {}}


def test_each_refusal_has_its_own_code(server, pki, users_json):
    a, b = users_json[0]["user_id"], users_json[1]["user_id"]
    used = MemoryUsed()
    package, claims = server.issue_package(user_id=a, institution="H100200", workstation="W")
    nonce = claims.nonce

    with pytest.raises(EidError) as e:
        _auth(server, pki, package, nonce, a, used, now=claims.expires_at)
    assert _code(e) == "package_expired"
    with pytest.raises(EidError) as e:
        _auth(server, pki, package[:-4] + "AAAA", nonce, a, used)
    assert _code(e) == "package_invalid"
    with pytest.raises(EidError) as e:
        server.authenticate(package=package, card_certificate=None, signature="x", used=used)
    assert _code(e) == "bad_request"

    foreign_key, foreign_ca = make_ca("Foreign card CA")
    fk, fc = issue_card_certificate(foreign_key, foreign_ca, holder_name="X",
                                    card_serial=users_json[0]["card_serial"])
    with pytest.raises(EidError) as e:
        _auth(server, pki, package, nonce, a, used, key=fk, cert=fc)
    assert _code(e) == "card_untrusted"
    with pytest.raises(EidError) as e:
        server.authenticate(package=package, card_certificate="bm90IGRlcg==", signature="x",
                            used=used, now=NOW)
    assert _code(e) == "card_untrusted"

    with pytest.raises(EidError) as e:
        _auth(server, pki, package, b"\x00" * 32, a, used)
    assert _code(e) == "bad_signature"

    with pytest.raises(EidError) as e:  # B's card for A's package
        _auth(server, pki, package, nonce, b, used)
    assert _code(e) == "card_not_registered"
    ca_key = load_pem_private_key(pki.card_ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.card_ca_cert.read_bytes())
    uk, uc = issue_card_certificate(ca_key, ca_cert, holder_name="Dr. Senki", card_serial="EK00000001")
    with pytest.raises(EidError) as e:  # a genuine card nobody registered
        _auth(server, pki, package, nonce, a, used, key=uk, cert=uc)
    assert _code(e) == "card_not_registered"

    server.cards.set_activated(users_json[0]["card_serial"], False)
    with pytest.raises(EidError) as e:
        _auth(server, pki, package, nonce, a, used)
    assert _code(e) == "card_not_activated"
    server.cards.set_activated(users_json[0]["card_serial"], True)

    assert not used.spent  # no refusal spent the package
    _auth(server, pki, package, nonce, a, used)
    with pytest.raises(EidError) as e:
        _auth(server, pki, package, nonce, a, used)
    assert _code(e) == "package_used"
    assert e.value.http_status == 403
    failed = server.counters.snapshot()["authentications"]["failed"]
    assert failed == {"package_expired": 1, "package_invalid": 1, "bad_request": 1,
                      "card_untrusted": 2, "bad_signature": 1, "card_not_registered": 2,
                      "card_not_activated": 1, "package_used": 1}


def test_card_certificate_without_a_serial_is_untrusted(server, pki, users_json):
    ca_key = load_pem_private_key(pki.card_ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.card_ca_cert.read_bytes())
    key, cert = issue_card_certificate(ca_key, ca_cert, holder_name="X", card_serial="")
    assert card_serial_of(cert) is None
    package, claims = server.issue_package(user_id=users_json[0]["user_id"],
                                           institution="H100200", workstation="W")
    with pytest.raises(EidError) as e:
        _auth(server, pki, package, claims.nonce, users_json[0]["user_id"], MemoryUsed(),
              key=key, cert=cert)
    assert _code(e) == "card_untrusted"


# --- redeeming rIDs ---------------------------------------------------------------------------------
def _rid(server, pki, users_json, i=0) -> str:
    u = users_json[i]
    package, claims = server.issue_package(user_id=u["user_id"], institution="H100200",
                                           workstation="W")
    return _auth(server, pki, package, claims.nonce, u["user_id"], MemoryUsed())[0]


@pytest.mark.parametrize("case, reason", [
    ("expired", "expired"), ("wrong_user", "wrong_user"),
    ("wrong_institution", "wrong_institution"), ("package", "invalid"), ("forged", "invalid"),
])
def test_redeem_refusals_name_the_reason(server, pki, users_json, case, reason):
    rid = _rid(server, pki, users_json)
    user, inst, now = users_json[0]["user_id"], "H100200", NOW
    if case == "expired":
        now = NOW + timedelta(seconds=60)
    elif case == "wrong_user":
        user = users_json[1]["user_id"]
    elif case == "wrong_institution":
        inst = "H999999"
    elif case == "package":
        rid = server.issue_package(user_id=user, institution=inst, workstation="W")[0]
    elif case == "forged":
        rid = EidKey(ec.generate_private_key(ec.SECP256R1())).sign(
            json.loads(b64url_decode(rid.split(".")[0])))
    with pytest.raises(RidRefused) as e:
        server.redeem_rid(rid, user_id=user, institution=inst, used=MemoryUsed(), now=now)
    assert e.value.reason == reason
    if reason == "wrong_user":
        assert "wrong user" in e.value.message


def test_redeem_is_single_use(server, pki, users_json):
    rid = _rid(server, pki, users_json)
    used = MemoryUsed()
    claims = server.redeem_rid(rid, user_id=users_json[0]["user_id"], institution="H100200",
                               used=used)
    assert claims.card_serial == users_json[0]["card_serial"]
    with pytest.raises(RidRefused) as e:
        server.redeem_rid(rid, user_id=users_json[0]["user_id"], institution="H100200", used=used)
    assert (e.value.reason, "replayed" in e.value.message) == ("replayed", True)
    snap = server.counters.snapshot()
    assert (snap["rids_redeemed"], snap["rids_refused"]) == (1, {"replayed": 1})


# --- registry, store, users file ---------------------------------------------------------------------
def test_card_registry_activation_apply_and_reset(pki, users_json):
    registry = CardRegistry(UserRegistry.load(pki.directory / "users.json"))
    serial = users_json[0]["card_serial"]
    assert len(registry) == 4 and registry.get(serial).activated
    assert registry.set_activated(serial, False).activated is False
    assert registry.set_activated("EK-none", False) is None
    registry.reset()
    assert registry.get(serial).activated
    registry.apply({serial: False, "unknown": True})
    assert [e.activated for e in registry.entries() if e.card_serial == serial] == [False]
    assert registry.get("unknown") is None


def test_store_spends_once_across_connections_and_reset_keeps_it(tmp_path: Path):
    first = Store(tmp_path / "s.sqlite")
    assert first.mark_used("rid", "r1") and not first.mark_used("rid", "r1")
    assert first.mark_used("package", "r1")  # another kind, another id space
    first.set_card_state("EK1", False)
    first.reset()
    second = Store(tmp_path / "s.sqlite")
    assert second.is_used("rid", "r1") and not second.mark_used("rid", "r1")
    assert second.card_states() == {}
    second.set_card_state("EK2", False)
    second.set_card_state("EK2", True)
    assert first.card_states() == {"EK2": True}


def test_users_file_refuses_a_duplicate_card_or_a_non_boolean_activation(tmp_path: Path):
    path = tmp_path / "users.json"
    base = {"user_id": "O1", "institution": "H1", "card_serial": "EK1", "card_activated": True}
    path.write_text(json.dumps({"users": [base, {**base, "user_id": "O2"}]}))
    with pytest.raises(ValueError, match=r"users\[1\]\.card_serial"):
        UserRegistry.load(path)
    path.write_text(json.dumps({"users": [{**base, "card_activated": "yes"}]}))
    with pytest.raises(ValueError, match="card_activated"):
        UserRegistry.load(path)
    path.write_text(json.dumps({"users": [{"user_id": "O1", "institution": "H1"}]}))
    user = UserRegistry.load(path).get("O1")
    assert (user.card_serial, user.card_activated) == (None, False)


def test_demo_users_get_a_virtual_card_each(pki: PkiPaths, users_json):
    cards = pki.directory / "cards"
    ca = x509.load_pem_x509_certificate(pki.card_ca_cert.read_bytes())
    serials = set()
    for u in users_json:
        assert u["card_activated"] is True and u["card_serial"].startswith("EK")
        assert len(u["card_serial"]) == 10 and u["card_serial"][2:].isdigit()
        serials.add(u["card_serial"])
        key_path, cert_path, json_path = (cards / f"{u['user_id']}{s}" for s in (".key", ".pem", ".json"))
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(json_path.stat().st_mode) == 0o600
        assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
        key = load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        assert card_serial_of(cert) == u["card_serial"]
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        card = json.loads(json_path.read_text(encoding="utf-8"))
        assert len(card["pin"]) == 6 and card["pin"].isdigit()
        assert len(card["can"]) == 6 and card["can"].isdigit()
        assert len(card["puk"]) == 8 and card["puk"].isdigit()
        doc = card["document"]
        assert doc["name"].startswith("Dr. ") and len(doc["document_id"]) == 8
        assert is_valid_taj(doc["taj"]) and doc["card_serial"] == u["card_serial"]
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == doc["name"]
    assert len(serials) == len(users_json)


def test_demo_users_without_a_card_ca_get_no_cards(tmp_path: Path):
    users = write_demo_users(tmp_path / "users.json", institution="H1", count=2)
    assert "card_serial" not in users[0] and not (tmp_path / "cards").exists()
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600


def test_demo_users_take_an_explicit_card_ca(pki: PkiPaths, tmp_path: Path):
    users = write_demo_users(tmp_path / "users.json", institution="H1", count=1, card_ca=pki)
    assert (tmp_path / "cards" / f"{users[0]['user_id']}.pem").is_file()


# --- the SOAP side of EidPackageRequest --------------------------------------------------------------
def test_eid_package_request_template_matches_the_xsd():
    schema = etree.XMLSchema(etree.parse(str(contract_path("sts.xsd"))))
    env = build_eid_package_request(user_id="O10001", workstation="WS-<1>")
    op = env.find(f"{{http://schemas.xmlsoap.org/soap/envelope/}}Body/{{{STS_NS}}}EidPackageRequest")
    assert schema.validate(op), schema.error_log
    assert op.findtext(f"{{{STS_NS}}}Workstation") == "WS-<1>"


def test_parse_eid_package_reads_the_answer_and_faults():
    ok = (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
          f'<sts:EidPackageResponse xmlns:sts="{STS_NS}"><sts:Package>abc.def</sts:Package>'
          f"<sts:ExpiresAt>2026-03-01T08:02:00.000Z</sts:ExpiresAt></sts:EidPackageResponse>"
          f"</soap:Body></soap:Envelope>").encode()
    assert parse_eid_package(200, ok) == ("abc.def", FIXED + timedelta(minutes=2))
    from simulator.soapio import fault_bytes

    fault = fault_bytes(SoapFault(FaultCode.AUTH_FAILED, "no eID package for O1", field="UserId"))
    with pytest.raises(ServiceRejected) as e:
        parse_eid_package(500, fault)
    assert (e.value.code, e.value.field) == (FaultCode.AUTH_FAILED.value, "UserId")


def test_rid_package_is_base64_of_the_utf8_rid():
    assert base64.b64decode(encode_rid_package("a.b")) == b"a.b"
