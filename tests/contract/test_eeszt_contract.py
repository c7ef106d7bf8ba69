"""The same cases against the in-memory FakeEeszt and the real simulator over HTTPS.

If the fake drifts from the simulator (and so from what the pipeline is tested against), one
side of these tests fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from schemas.soap import FaultCode
from simulator.saml import AssertionIssuer
from tests import samples
from workers.client.client import ClientFiles, EesztClient
from workers.errors import ServiceRejected, TokenRejected
from workers.client.fakes import FakeEeszt


class FakeSide:
    name = "fake"

    def __init__(self, users):
        self.users = users
        self.eeszt = FakeEeszt(passwords={u["user_id"]: u["password"] for u in users})

    def mode(self, duplicates: str) -> None:
        self.eeszt.duplicates = duplicates

    def expired_doctor_token(self):
        token = self.eeszt.issue_token(method="password", user_id=self.users[0]["user_id"],
                                       password=self.users[0]["password"]).assertion
        self.eeszt.expire_all_tokens()
        return token


class RealSide:
    name = "simulator"

    def __init__(self, users, simulator, pki):
        self.users, self.sim, self.pki = users, simulator, pki
        self.eeszt = EesztClient(base_url=simulator.base_url,
                                 files=ClientFiles.from_pki_dir(pki.directory))

    def mode(self, duplicates: str) -> None:
        self.sim.reset(duplicates=duplicates)
        # the fake has no two-factor rule; the simulator's is tested in test_eeszt_rules_business
        self.sim.admin("PATCH", "/admin/rules", {"require_two_factor": False})

    def expired_doctor_token(self):
        issuer = AssertionIssuer(key_pem=self.pki.sts_key.read_bytes(),
                                 cert_pem=self.pki.sts_cert.read_bytes())
        return issuer.issue(subject=self.users[0]["user_id"], role="doctor", institution="H100200",
                            method="password", lifetime=timedelta(minutes=5),
                            now=datetime.now(timezone.utc) - timedelta(hours=1))


@pytest.fixture(params=["fake", pytest.param("simulator", marks=pytest.mark.integration)])
def side(request, demo_users):
    if request.param == "fake":
        s = FakeSide(demo_users)
    else:
        s = RealSide(demo_users, request.getfixturevalue("simulator"),
                     request.getfixturevalue("pki"))
    s.mode("naive")
    yield s
    s.eeszt.close()


def doctor(side):
    u = side.users[0]
    return side.eeszt.issue_token(method="password", user_id=u["user_id"],
                                  password=u["password"]).assertion


def test_doctor_prescription_is_accepted_and_can_be_found_by_key(side):
    request = samples.prescription(user_id=side.users[0]["user_id"])
    token = doctor(side)
    assert side.eeszt.query("eRecept", request.idempotency_key, token) == []
    result = side.eeszt.submit(request, token)
    found = side.eeszt.query("eRecept", request.idempotency_key, token)
    assert [f.eeszt_id for f in found] == [result.eeszt_id] and result.version == 1


def test_institution_token_may_not_write_erecept(side):
    token = side.eeszt.issue_token(method="x509").assertion
    with pytest.raises(ServiceRejected) as exc:
        side.eeszt.submit(samples.prescription(), token)
    assert exc.value.code == FaultCode.PERMISSION_DENIED.value


def test_naive_mode_stores_a_repeat_and_dedupe_returns_the_first(side):
    token = doctor(side)
    request = samples.prescription(user_id=side.users[0]["user_id"])
    a, b = side.eeszt.submit(request, token), side.eeszt.submit(request, token)
    assert a.eeszt_id != b.eeszt_id
    assert len(side.eeszt.query("eRecept", request.idempotency_key, token)) == 2
    side.mode("dedupe")
    token = doctor(side)
    request = samples.prescription(user_id=side.users[0]["user_id"])
    a, b = side.eeszt.submit(request, token), side.eeszt.submit(request, token)
    assert a.eeszt_id == b.eeszt_id


def test_expired_token_is_a_token_problem(side):
    with pytest.raises(TokenRejected) as exc:
        side.eeszt.submit(samples.prescription(), side.expired_doctor_token())
    assert exc.value.code == FaultCode.TOKEN_EXPIRED.value


def test_wrong_password_fails_authentication(side):
    with pytest.raises(ServiceRejected) as exc:
        side.eeszt.issue_token(method="password", user_id=side.users[0]["user_id"], password="nope")
    assert exc.value.code == FaultCode.AUTH_FAILED.value
