"""The card seam: a reader gives a channel; :class:`EszigCard` speaks the applet over it.

- :class:`PcscReader`: a real reader through pyscard → libpcsclite → pcscd.
- :class:`InProcessReader`: an in-process card object (the embedded demo's virtual card), behind
  the same interface.

The official eSzemélyi client would replace the whole card + eID step instead: it implements
:class:`card_bridge.login.CardClient` (challenge in, rID out), not this lower seam.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from schemas.card import (
    AID,
    CAN_LENGTH,
    FID_CERTIFICATE,
    FID_DOCUMENT,
    INS_INTERNAL_AUTHENTICATE,
    INS_READ_BINARY,
    INS_SELECT,
    INS_VERIFY,
    MAX_READ,
    P2_CAN,
    P2_PIN,
    PIN_LENGTH,
    SW,
)

from .errors import CanRequired, CardError, NoCard, NoReader, PinBlocked, WrongPin


class CardChannel(Protocol):
    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one command APDU; return (data, status word). Raises NoCard if the card left."""

    def close(self) -> None: ...


class CardReader(Protocol):
    def connect(self, *, timeout_s: float) -> CardChannel:
        """Wait up to ``timeout_s`` for a card and connect. Raises NoReader or NoCard."""


# --- PC/SC ----------------------------------------------------------------------------------------
def _pcsc_errors():
    from smartcard.Exceptions import CardConnectionException, CardRequestTimeoutException, NoCardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException

    return CardConnectionException, CardRequestTimeoutException, NoCardException, BaseSCardException


class _PcscChannel:
    def __init__(self, service: Any) -> None:
        self._service = service  # keep a reference: pyscard releases the context otherwise
        self._conn = service.connection

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        CardConnectionException, _, _, BaseSCardException = _pcsc_errors()
        try:
            data, sw1, sw2 = self._conn.transmit(list(apdu))
        except (CardConnectionException, BaseSCardException) as exc:
            # Any failure on transmit means the card (or pcscd) went away.
            raise NoCard(f"the card was removed ({type(exc).__name__})") from None
        return bytes(data), (sw1 << 8) | sw2

    def close(self) -> None:
        try:
            self._conn.disconnect()
        except Exception:  # already gone: nothing to release
            pass


class PcscReader:
    """A PC/SC reader; ``name`` picks the first reader whose name contains it."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def _readers(self) -> list:
        _, _, _, BaseSCardException = _pcsc_errors()
        from smartcard.System import readers

        try:
            found = readers()
        except BaseSCardException as exc:
            raise NoReader(f"PC/SC is not available (is pcscd running?): {exc}") from None
        if self.name:
            found = [r for r in found if self.name in str(r)]
        if not found:
            raise NoReader("no card reader found" + (f" matching {self.name!r}" if self.name else ""))
        return found

    def connect(self, *, timeout_s: float) -> CardChannel:
        CardConnectionException, Timeout, NoCardException, BaseSCardException = _pcsc_errors()
        from smartcard.CardRequest import CardRequest

        reader = self._readers()[0]
        try:
            service = CardRequest(timeout=max(timeout_s, 0.1), readers=[reader]).waitforcard()
            service.connection.connect()
        except Timeout:
            raise NoCard(f"no card in {reader} within {timeout_s:g}s") from None
        except (NoCardException, CardConnectionException) as exc:
            raise NoCard(f"no usable card in {reader}: {exc}") from None
        except BaseSCardException as exc:
            raise NoReader(f"PC/SC failed: {exc}") from None
        return _PcscChannel(service)


# --- in process -----------------------------------------------------------------------------------
class _InProcessChannel:
    def __init__(self, card: Any) -> None:
        self._card = card

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            data, sw = self._card.transmit(apdu)
        except Exception as exc:  # the in-process card raises its own CardRemoved
            raise NoCard(f"the card was removed ({type(exc).__name__})") from None
        return bytes(data), int(sw)

    def close(self) -> None:
        self._card.disconnect()


class InProcessReader:
    """An in-process card with ``present``, ``connect()``, ``disconnect()``, ``transmit()``."""

    def __init__(self, card: Any) -> None:
        self.card = card

    def connect(self, *, timeout_s: float) -> CardChannel:
        deadline = time.monotonic() + timeout_s
        while not self.card.present:
            if time.monotonic() >= deadline:
                raise NoCard(f"no card within {timeout_s:g}s")
            time.sleep(0.05)
        self.card.connect()
        return _InProcessChannel(self.card)


# --- the applet -----------------------------------------------------------------------------------
class EszigCard:
    """The eSZIG applet's operations over a channel; status words become typed errors."""

    def __init__(self, channel: CardChannel) -> None:
        self.ch = channel

    def _cmd(self, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> tuple[bytes, int]:
        apdu = bytes([0x00, ins, p1, p2])
        if data:
            apdu += bytes([len(data)]) + data
        if le is not None:
            apdu += bytes([le & 0xFF])
        return self.ch.transmit(apdu)

    @staticmethod
    def _ok(sw: int, what: str) -> None:
        if sw != SW.OK:
            raise CardError(f"{what} failed with status {sw:04X}")

    def select(self) -> None:
        _, sw = self._cmd(INS_SELECT, 0x04, 0x00, AID)
        self._ok(sw, "SELECT of the eSZIG applet")

    def pin_state(self) -> tuple[bool, int | None]:
        """(verified, tries_left); raises CanRequired or PinBlocked when that is the state."""
        _, sw = self._cmd(INS_VERIFY, 0x00, P2_PIN)
        if sw == SW.OK:
            return True, None
        return False, self._pin_problem(sw, raise_wrong=False)

    def _pin_problem(self, sw: int, *, raise_wrong: bool) -> int | None:
        if sw & 0xFFF0 == SW.WRONG_PIN:
            tries = sw & 0x0F
            if raise_wrong:
                raise WrongPin(f"wrong PIN, {tries} tries left", tries_left=tries)
            return tries
        if sw == SW.CAN_REQUIRED:
            raise CanRequired("the card needs its CAN before the last PIN try", tries_left=1)
        if sw == SW.BLOCKED:
            raise PinBlocked("the PIN is blocked; unblock it with the PUK", tries_left=0)
        raise CardError(f"VERIFY failed with status {sw:04X}")

    def verify_pin(self, pin: str) -> None:
        if len(pin) != PIN_LENGTH or not pin.isdigit():
            raise WrongPin(f"a PIN has {PIN_LENGTH} digits")
        _, sw = self._cmd(INS_VERIFY, 0x00, P2_PIN, pin.encode("ascii"))
        if sw != SW.OK:
            self._pin_problem(sw, raise_wrong=True)

    def verify_can(self, can: str) -> None:
        if len(can) != CAN_LENGTH or not can.isdigit():
            raise CanRequired(f"a CAN has {CAN_LENGTH} digits", tries_left=1)
        _, sw = self._cmd(INS_VERIFY, 0x00, P2_CAN, can.encode("ascii"))
        if sw != SW.OK:
            raise CanRequired("the CAN was not accepted", tries_left=1)

    def internal_authenticate(self, nonce: bytes) -> bytes:
        data, sw = self._cmd(INS_INTERNAL_AUTHENTICATE, 0x00, 0x00, nonce, le=0)
        self._ok(sw, "INTERNAL AUTHENTICATE")
        return data

    def read_file(self, fid: bytes) -> bytes:
        _, sw = self._cmd(INS_SELECT, 0x02, 0x0C, fid)
        self._ok(sw, f"SELECT of file {fid.hex()}")
        out = bytearray()
        while True:
            data, sw = self._cmd(INS_READ_BINARY, len(out) >> 8, len(out) & 0xFF, le=MAX_READ)
            if sw == SW.WRONG_OFFSET:
                break
            self._ok(sw, "READ BINARY")
            out += data
            if len(data) < MAX_READ:
                break
        return bytes(out)

    def certificate(self) -> bytes:
        return self.read_file(FID_CERTIFICATE)

    def document(self) -> dict[str, Any]:
        return json.loads(self.read_file(FID_DOCUMENT))
