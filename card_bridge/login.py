"""The card client seam: a challenge and a prompt in, an rID package out (or a CardError).

:class:`LocalCardClient` is the bridge's own implementation: PC/SC card + the eID server.
:class:`MobilTokenClient` is the same seam for a doctor without a card: the doctor types the
code of the MobilToken app, and the bridge posts package and code to the eID server itself
(the code never goes to the broker nor to the gateway). The bridge setting ``login_method``
picks one of the two.
The official **eSzemélyi client** is the second implementation this seam is shaped for: it
drives the card and talks to the eID server itself, so an ``ESzemelyiClient`` would hand it the
challenge's eID package and return the rID package it produces, mapping its error codes onto
:mod:`card_bridge.errors`. It is not built here (the official client is not available on
Linux CI); see the README.
"""

from __future__ import annotations

from typing import Protocol

from schemas.card import CardChallenge

from .card import CardReader, EszigCard
from .eid import EidPackage, EidServer
from .errors import CanRequired, Cancelled, CardError, ChallengeRefused, TimedOut, WrongCode
from .prompt import Kind, Prompt, PromptInfo


class CardClient(Protocol):
    def login(self, challenge: CardChallenge, prompt: Prompt) -> str:
        """Run one card login for ``challenge``; return the rID package. Raises CardError."""


def info_of(challenge: CardChallenge) -> PromptInfo:
    return PromptInfo(user_id=challenge.user_id, institution=challenge.institution,
                      workstation=challenge.workstation, purpose=challenge.purpose)


def ask(prompt: Prompt, kind: Kind, info: PromptInfo, *, tries_left: int | None,
        timeout_s: float) -> str:
    """A secret from the doctor; raises Cancelled or TimedOut."""
    try:
        value = prompt.ask(kind, info, tries_left=tries_left, timeout_s=timeout_s)
    except TimeoutError as exc:
        raise TimedOut(str(exc)) from None
    if not value:
        raise Cancelled(f"the doctor cancelled the {kind} prompt")
    return value


def _package_for(challenge: CardChallenge) -> EidPackage:
    try:
        package = EidPackage.parse(challenge.eid_package or "")
    except (ValueError, KeyError) as exc:
        raise ChallengeRefused(f"the eID package is malformed ({type(exc).__name__})") from None
    if package.user_id != challenge.user_id:
        raise ChallengeRefused("the eID package names another user than the challenge")
    return package


class MobilTokenClient:
    """MobilToken login: the doctor's code and the package go straight to the eID server."""

    def __init__(self, *, eid: EidServer, prompt_timeout_s: float = 120.0) -> None:
        self.eid = eid
        self.prompt_timeout_s = prompt_timeout_s

    def login(self, challenge: CardChallenge, prompt: Prompt) -> str:
        package = _package_for(challenge)
        code = ask(prompt, "otp", info_of(challenge), tries_left=None,
                   timeout_s=self.prompt_timeout_s).strip()
        if len(code) != 6 or not code.isdigit():
            raise WrongCode("a MobilToken code has 6 digits")
        return self.eid.mobiltoken(package=package.raw, otp=code)


class LocalCardClient:
    def __init__(self, *, reader: CardReader, eid: EidServer, card_wait_s: float = 30.0,
                 prompt_timeout_s: float = 120.0) -> None:
        self.reader = reader
        self.eid = eid
        self.card_wait_s = card_wait_s
        self.prompt_timeout_s = prompt_timeout_s

    def login(self, challenge: CardChallenge, prompt: Prompt) -> str:
        package = _package_for(challenge)
        info = info_of(challenge)
        channel = self.reader.connect(timeout_s=self.card_wait_s)
        try:
            card = EszigCard(channel)
            card.select()
            try:
                verified, tries = card.pin_state()
            except CanRequired:
                card.verify_can(ask(prompt, "can", info, tries_left=1, timeout_s=self.prompt_timeout_s))
                verified, tries = card.pin_state()
            if not verified:
                # The PIN goes from the prompt to the card and nowhere else.
                card.verify_pin(ask(prompt, "pin", info, tries_left=tries,
                                    timeout_s=self.prompt_timeout_s))
            signature = card.internal_authenticate(package.nonce)
            certificate = card.certificate()
        finally:
            channel.close()
        return self.eid.authenticate(package=package.raw, certificate_der=certificate,
                                     signature=signature)


__all__ = ["CardClient", "LocalCardClient", "MobilTokenClient", "ask", "info_of", "CardError"]
