"""Fixtures and helpers of the simulator-rules tests (test_eeszt_rules*.py).

One simulator per test module, started with a users file that holds doctors of two institutions
(H100200, the session PKI's, and H100300, minted by :mod:`tests.institutions`), and a client per
institution. Doctors get their two-factor (MobilToken) token once per module: a one-time code is
accepted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pyotp
import pytest
from lxml import etree

from schemas.envelope import RequestEnvelope
from tests.conftest import SimulatorProcess, start_simulator, stop_simulator
from tests.institutions import client_for, mint_institution, users_file_with
from workers.client.client import ClientFiles, EesztClient
from workers.errors import ServiceRejected
from workers.client.soap import SubmitResult, build_call, parse_submit
from workers.client.wsse import WsseSigner

OTHER = "H100300"


@dataclass
class World:
    sim: SimulatorProcess
    home: EesztClient  # H100200
    other: EesztClient  # H100300
    home_doctors: list[dict[str, Any]]
    other_doctors: list[dict[str, Any]]
    _two_factor: dict[str, etree._Element] = field(default_factory=dict)

    def two_factor_token(self, client: EesztClient, user: dict[str, Any]) -> etree._Element:
        """A doctor's MobilToken token, issued once per module and user."""
        if user["user_id"] not in self._two_factor:
            self._two_factor[user["user_id"]] = client.issue_token(
                method="mobiltoken", user_id=user["user_id"], workstation=user["workstation"],
                otp=pyotp.TOTP(user["totp_secret"]).now()).assertion
        return self._two_factor[user["user_id"]]

    def password_token(self, user: dict[str, Any]) -> etree._Element:
        return self.home.issue_token(method="password", user_id=user["user_id"],
                                     password=user["password"]).assertion

    def institution_token(self, client: EesztClient) -> etree._Element:
        return client.issue_token(method="x509").assertion


@pytest.fixture(scope="module")
def world(pki, demo_users, tmp_path_factory):
    work = tmp_path_factory.mktemp("rules")
    other_files: ClientFiles = mint_institution(pki, work / OTHER.lower(), institution_id=OTHER)
    others = users_file_with(pki, work / "users.json", institution_id=OTHER)
    sim = start_simulator(pki, work, "--users-file", str(work / "users.json"))
    home = client_for(sim.base_url, ClientFiles.from_pki_dir(pki.directory))
    other = client_for(sim.base_url, other_files)
    try:
        yield World(sim=sim, home=home, other=other, home_doctors=demo_users,
                    other_doctors=others)
    finally:
        home.close()
        other.close()
        stop_simulator(sim)


@pytest.fixture()
def rules(world):
    """The module's simulator, clean, in naive mode, with its start rules."""
    world.sim.reset(duplicates="naive")
    return world


def as_other(request: RequestEnvelope, **update: Any) -> RequestEnvelope:
    """``request`` as H100300 sends it."""
    return request.model_copy(update={"institution": OTHER, **update})


def refusal(call: Callable[[], Any]) -> ServiceRejected:
    """The refusal ``call`` raises (TokenRejected is a ServiceRejected too)."""
    with pytest.raises(ServiceRejected) as exc:
        call()
    return exc.value


def post_envelope(client: EesztClient, request: RequestEnvelope, envelope: etree._Element,
                  token: etree._Element | None, signer: WsseSigner | None = None,
                  tweak: Callable[[etree._Element], None] | None = None) -> SubmitResult:
    """Sign ``envelope`` (by default with the client's institution key), let ``tweak`` change
    the signed tree, and post it where ``request`` goes."""
    signed = (signer or client.signer).sign(envelope, assertion=token)
    if tweak is not None:
        tweak(signed)
    call = build_call(request)
    resp = client.transport.post(call.path, etree.tostring(signed, xml_declaration=True,
                                                            encoding="UTF-8"),
                                 soap_action=call.soap_action)
    return parse_submit(resp.status, resp.body, service=call.service.name)
