"""The eID server's MobilToken route: the doctor's code is checked where the secret lives (the
simulator's users file), once, and the rID records the method the STS writes into the token."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyotp
import pytest

from simulator.eid import EidError, EidKey, EidServer, RidClaims
from simulator.eid_tokens import RID_TYP, TokenInvalid
from simulator.users import UserRegistry
from tests.unit.test_eid import MemoryUsed, pki, users_json  # noqa: F401 (fixtures)

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture()
def server(pki) -> EidServer:  # noqa: F811
    users = UserRegistry.load(pki.directory / "users.json")
    return EidServer(key=EidKey.from_pem(pki.eid_key.read_bytes()),
                     card_ca_pem=pki.card_ca_cert.read_bytes(), users=users)


def code_of(users_json, user_id: str) -> str:  # noqa: F811
    secret = next(u["totp_secret"] for u in users_json if u["user_id"] == user_id)
    return pyotp.TOTP(secret).now()


def test_the_right_code_gives_a_mobiltoken_rid_once(server, users_json):  # noqa: F811
    # Given an eID package for a doctor, and the code the doctor's phone shows,
    user = users_json[0]["user_id"]
    package, _ = server.issue_package(user_id=user, institution="H100200", workstation="WS-01")
    used, code = MemoryUsed(), code_of(users_json, user)
    # When the bridge posts both,
    rid, claims = server.mobiltoken(package=package, otp=code, used=used)
    # then the rID says MobilToken, names no card, and redeems at the STS step;
    assert (claims.method, claims.card_serial, claims.user_id) == ("mobiltoken", None, user)
    redeemed = server.redeem_rid(rid, user_id=user, institution="H100200", used=used)
    assert redeemed.method == "mobiltoken"
    # and neither the package nor the code can be used again.
    with pytest.raises(EidError) as again:
        server.mobiltoken(package=package, otp=code, used=used)
    assert again.value.code == "package_used"
    other, _ = server.issue_package(user_id=user, institution="H100200", workstation="WS-01")
    with pytest.raises(EidError) as reused:
        server.mobiltoken(package=other, otp=code, used=used)
    assert reused.value.code == "otp_invalid"


def test_a_wrong_code_is_refused_and_leaves_the_package_usable(server, users_json):  # noqa: F811
    user = users_json[1]["user_id"]
    package, _ = server.issue_package(user_id=user, institution="H100200", workstation="WS-02")
    used = MemoryUsed()
    right = code_of(users_json, user)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    with pytest.raises(EidError) as refused:
        server.mobiltoken(package=package, otp=wrong, used=used)
    assert refused.value.code == "otp_invalid" and refused.value.http_status == 403
    _, claims = server.mobiltoken(package=package, otp=right, used=used)
    assert claims.method == "mobiltoken"


@pytest.mark.parametrize("otp", [None, "", "12345", "1234567", "12a456", 123456])
def test_a_malformed_code_is_a_bad_request_naming_the_field(server, users_json, otp):  # noqa: F811
    package, _ = server.issue_package(user_id=users_json[2]["user_id"], institution="H100200",
                                      workstation="WS-03")
    with pytest.raises(EidError) as bad:
        server.mobiltoken(package=package, otp=otp, used=MemoryUsed())
    assert bad.value.code == "bad_request" and "otp" in bad.value.message


def test_a_doctor_without_a_mobiltoken_is_told_so(server, users_json):  # noqa: F811
    user = users_json[3]["user_id"]
    server.users.get(user).totp_secret = None
    package, _ = server.issue_package(user_id=user, institution="H100200", workstation="WS-04")
    with pytest.raises(EidError) as refused:
        server.mobiltoken(package=package, otp="123456", used=MemoryUsed())
    assert refused.value.code == "mobiltoken_not_enrolled"


def test_an_expired_or_foreign_package_is_refused_before_the_code_is_checked(server, users_json):  # noqa: F811
    user = users_json[0]["user_id"]
    old, _ = server.issue_package(user_id=user, institution="H100200", workstation="WS-01",
                                  now=NOW - timedelta(hours=1))
    with pytest.raises(EidError) as expired:
        server.mobiltoken(package=old, otp="123456", used=MemoryUsed())
    assert expired.value.code == "package_expired"
    with pytest.raises(EidError) as invalid:
        server.mobiltoken(package="not.a-package", otp="123456", used=MemoryUsed())
    assert invalid.value.code == "package_invalid"


def test_rid_claims_carry_the_method_and_refuse_an_unknown_one():
    claims = RidClaims(rid_id="r", user_id="O10001", institution="H100200", package_id="p",
                       card_serial=None, workstation="WS-01", issued_at=NOW,
                       expires_at=NOW + timedelta(minutes=1), method="mobiltoken")
    data = claims.claims()
    assert data["method"] == "mobiltoken" and "card_serial" not in data
    assert RidClaims.from_claims(data) == claims
    legacy = {**data, "card_serial": "EK1"}
    del legacy["method"]
    assert RidClaims.from_claims(legacy).method == "eszig"  # an rID without a method: a card
    with pytest.raises(TokenInvalid, match="method"):
        RidClaims.from_claims({**data, "method": "password"})
    assert data["typ"] == RID_TYP
