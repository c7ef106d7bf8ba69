"""The eSZIG applet of the virtual card: ISO 7816-4 APDUs in, response APDUs out.

Pure and in memory: no sockets, no files, no logging of data fields. :class:`EszigApplet`
implements exactly the contract in :mod:`schemas.card` (AID, FIDs, INS, P2 and status words).
It is driven by :class:`simulator.card.vpcd.VpcdCard` (through pcscd) or by
:class:`simulator.card.InProcessCard` (the embedded demo), from any thread.

State, as on a chip:

- persistent (survives power off): the PIN, the PIN try counter, the PUK try counter;
- volatile (dropped by :meth:`EszigApplet.power_off` and :meth:`EszigApplet.reset`): the
  selected applet, the selected EF, "PIN verified" and "CAN verified".

Status words the contract leaves open, and what this applet answers:

- READ BINARY with no EF selected: 6A82 (there is no current file);
- P1/P2 the contract does not list (for example SELECT with P1 05): 6A80 (malformed);
- a PIN, CAN or PUK that is not all ASCII digits: 6A80, and no try is used;
- a wrong PIN also drops the verified state; the CAN stays verified until power off;
- the wrong PIN (or PUK) that uses up the last try answers 6983 at once (never 63C0);
- RESET RETRY COUNTER works in any state (blocked or not) and needs neither PIN nor CAN;
- an APDU whose length bytes do not add up, or an extended-length APDU: 6700;
- INTERNAL AUTHENTICATE signs SHA-256(nonce): verify with ``ECDSA(SHA256())`` over the nonce.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from schemas import card as c

__all__ = ["Apdu", "EszigApplet", "parse_apdu", "make_atr"]

#: Historical bytes of the ATR (proprietary category: the first byte is not 00, 10 or 8x).
HISTORICAL_BYTES = b"eSZIG-SIM1"


def make_atr(historical: bytes = HISTORICAL_BYTES) -> bytes:
    """A T=1 ATR ``3B 8K 80 01 <historical> TCK`` (TCK = XOR of every byte after TS)."""
    if not 0 < len(historical) <= 15:
        raise ValueError("an ATR carries 1 to 15 historical bytes")
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


_ATR = make_atr()


@dataclass(frozen=True)
class Apdu:
    """A parsed short command APDU. ``le`` is None when absent; Le 00 is 256."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None

    @property
    def has_data(self) -> bool:
        return bool(self.data)


def parse_apdu(apdu: bytes) -> Apdu | None:
    """Split a short APDU into its fields (ISO 7816-3 cases 1-4); None when malformed."""
    if len(apdu) < 4:
        return None
    cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    body = apdu[4:]
    if not body:  # case 1
        return Apdu(cla, ins, p1, p2, b"", None)
    if len(body) == 1:  # case 2
        return Apdu(cla, ins, p1, p2, b"", body[0] or 256)
    lc = body[0]
    if lc == 0:  # extended length: not supported
        return None
    if len(body) == 1 + lc:  # case 3
        return Apdu(cla, ins, p1, p2, bytes(body[1:]), None)
    if len(body) == 2 + lc:  # case 4
        return Apdu(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), body[-1] or 256)
    return None


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _digits(value: bytes | str, length: int) -> bool:
    text = value if isinstance(value, str) else value.decode("ascii", "replace")
    return len(text) == length and text.isascii() and text.isdigit()


class EszigApplet:
    """The project's eSZIG applet (see :mod:`schemas.card`): one instance is one card.

    ``process`` never raises for a malformed APDU: it answers with a status word. The
    constructor raises :class:`ValueError` when the key is not P-256, the certificate does not
    hold the key's public half, or a PIN/CAN/PUK has the wrong length or is not all digits
    (without echoing the value).
    """

    def __init__(
        self,
        *,
        key: ec.EllipticCurvePrivateKey,
        certificate_der: bytes,
        document: dict[str, Any],
        pin: str,
        can: str,
        puk: str,
    ) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("the card key must be an EC P-256 private key")
        cert = x509.load_der_x509_certificate(certificate_der)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ValueError("the card certificate does not match the card key")
        for name, value, length in (
            ("PIN", pin, c.PIN_LENGTH),
            ("CAN", can, c.CAN_LENGTH),
            ("PUK", puk, c.PUK_LENGTH),
        ):
            if not _digits(value, length):
                raise ValueError(f"the {name} must be {length} ASCII digits")
        self._key = key
        self._files: dict[bytes, bytes] = {
            c.FID_CERTIFICATE: bytes(certificate_der),
            c.FID_DOCUMENT: json.dumps(document, ensure_ascii=False, sort_keys=True).encode(),
        }
        self._pin = pin.encode("ascii")
        self._can = can.encode("ascii")
        self._puk = puk.encode("ascii")
        self._lock = threading.RLock()
        # persistent
        self._pin_tries = c.PIN_TRIES
        self._puk_tries = c.PUK_TRIES
        # volatile
        self._selected = False
        self._ef: bytes | None = None
        self._pin_verified = False
        self._can_verified = False

    def __repr__(self) -> str:  # never show secrets or the key
        return (
            f"EszigApplet(pin_tries={self._pin_tries}, puk_tries={self._puk_tries}, "
            f"selected={self._selected}, verified={self._pin_verified})"
        )

    # --- the chip's life cycle --------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        """The card's answer to reset (T=1, correct TCK)."""
        return _ATR

    def power_off(self) -> None:
        """Contacts unpowered: the selection and every verified state are lost."""
        with self._lock:
            self._selected = False
            self._ef = None
            self._pin_verified = False
            self._can_verified = False

    def reset(self) -> None:
        """Warm or cold reset: the same volatile state is lost as at power off."""
        self.power_off()

    # --- read-only views (for tests and the demo UI; never the secrets) ---------------------
    @property
    def pin_tries_left(self) -> int:
        return self._pin_tries

    @property
    def puk_tries_left(self) -> int:
        return self._puk_tries

    @property
    def pin_verified(self) -> bool:
        return self._pin_verified

    @property
    def certificate_der(self) -> bytes:
        return self._files[c.FID_CERTIFICATE]

    @property
    def document_bytes(self) -> bytes:
        return self._files[c.FID_DOCUMENT]

    # --- APDU dispatch ----------------------------------------------------------------------
    def process(self, apdu: bytes) -> bytes:
        """Execute one command APDU; returns response data followed by the 2-byte status word."""
        cmd = parse_apdu(bytes(apdu))
        if cmd is None:
            return _sw(c.SW.WRONG_LENGTH)
        if cmd.cla != 0x00:
            return _sw(c.SW.CLA_NOT_SUPPORTED)
        handler = self._HANDLERS.get(cmd.ins)
        if handler is None:
            return _sw(c.SW.INS_NOT_SUPPORTED)
        with self._lock:
            if cmd.ins != c.INS_SELECT or cmd.p1 != 0x04:
                if not self._selected:
                    return _sw(c.SW.NOT_SELECTED)
            return handler(self, cmd)

    def _select(self, cmd: Apdu) -> bytes:
        if cmd.p1 == 0x04:  # by DF name (AID)
            if cmd.p2 not in (0x00, 0x0C):
                return _sw(c.SW.WRONG_DATA)
            if not cmd.has_data:
                return _sw(c.SW.WRONG_LENGTH)
            if cmd.data != c.AID:  # a failed SELECT keeps the current selection
                return _sw(c.SW.FILE_NOT_FOUND)
            self._selected = True
            self._ef = None
            return _sw(c.SW.OK)
        if cmd.p1 == 0x02:  # EF under the current DF, by FID
            if cmd.p2 not in (0x0C, 0x00):
                return _sw(c.SW.WRONG_DATA)
            if len(cmd.data) != 2:
                return _sw(c.SW.WRONG_LENGTH)
            if cmd.data not in self._files:
                return _sw(c.SW.FILE_NOT_FOUND)
            self._ef = cmd.data
            return _sw(c.SW.OK)
        return _sw(c.SW.WRONG_DATA)

    def _read_binary(self, cmd: Apdu) -> bytes:
        if cmd.has_data or cmd.le is None:
            return _sw(c.SW.WRONG_LENGTH)
        if self._ef is None:
            return _sw(c.SW.FILE_NOT_FOUND)
        content = self._files[self._ef]
        offset = (cmd.p1 << 8) | cmd.p2
        if offset >= len(content):
            return _sw(c.SW.WRONG_OFFSET)
        count = min(cmd.le, c.MAX_READ, len(content) - offset)
        return content[offset : offset + count] + _sw(c.SW.OK)

    def _verify(self, cmd: Apdu) -> bytes:
        if cmd.p1 != 0x00:
            return _sw(c.SW.WRONG_DATA)
        if cmd.p2 == c.P2_PIN:
            if not cmd.has_data and cmd.le in (None, 256):  # status form (Lc absent)
                return self._pin_status()
            return self._verify_pin(cmd.data)
        if cmd.p2 == c.P2_CAN:
            if len(cmd.data) != c.CAN_LENGTH:
                return _sw(c.SW.WRONG_LENGTH)
            if not _digits(cmd.data, c.CAN_LENGTH) or cmd.data != self._can:
                return _sw(c.SW.WRONG_DATA)
            self._can_verified = True
            return _sw(c.SW.OK)
        return _sw(c.SW.WRONG_DATA)

    def _pin_gate(self) -> bytes | None:
        """The status word that stops a PIN try (blocked or suspended), or None."""
        if self._pin_tries == 0:
            return _sw(c.SW.BLOCKED)
        if self._pin_tries == 1 and not self._can_verified:
            return _sw(c.SW.CAN_REQUIRED)
        return None

    def _pin_status(self) -> bytes:
        if self._pin_verified:
            return _sw(c.SW.OK)
        return self._pin_gate() or _sw(c.SW.WRONG_PIN | self._pin_tries)

    def _verify_pin(self, pin: bytes) -> bytes:
        if len(pin) != c.PIN_LENGTH:
            return _sw(c.SW.WRONG_LENGTH)
        if not _digits(pin, c.PIN_LENGTH):
            return _sw(c.SW.WRONG_DATA)
        gate = self._pin_gate()
        if gate is not None:
            return gate
        if pin == self._pin:
            self._pin_tries = c.PIN_TRIES
            self._pin_verified = True
            return _sw(c.SW.OK)
        self._pin_tries -= 1
        self._pin_verified = False
        if self._pin_tries == 0:
            return _sw(c.SW.BLOCKED)
        return _sw(c.SW.WRONG_PIN | self._pin_tries)

    def _reset_retry_counter(self, cmd: Apdu) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != c.P2_PIN:
            return _sw(c.SW.WRONG_DATA)
        if len(cmd.data) != c.PUK_LENGTH + c.PIN_LENGTH:
            return _sw(c.SW.WRONG_LENGTH)
        puk, new_pin = cmd.data[: c.PUK_LENGTH], cmd.data[c.PUK_LENGTH :]
        if not (_digits(puk, c.PUK_LENGTH) and _digits(new_pin, c.PIN_LENGTH)):
            return _sw(c.SW.WRONG_DATA)
        if self._puk_tries == 0:
            return _sw(c.SW.BLOCKED)
        if puk != self._puk:
            self._puk_tries -= 1
            if self._puk_tries == 0:
                return _sw(c.SW.BLOCKED)
            return _sw(c.SW.WRONG_PIN | self._puk_tries)
        self._puk_tries = c.PUK_TRIES
        self._pin = bytes(new_pin)
        self._pin_tries = c.PIN_TRIES
        self._pin_verified = False
        return _sw(c.SW.OK)

    def _internal_authenticate(self, cmd: Apdu) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            return _sw(c.SW.WRONG_DATA)
        if len(cmd.data) != c.NONCE_LENGTH:
            return _sw(c.SW.WRONG_LENGTH)
        if not self._pin_verified:
            return _sw(c.SW.SECURITY_NOT_SATISFIED)
        signature = self._key.sign(cmd.data, ec.ECDSA(hashes.SHA256()))
        return signature + _sw(c.SW.OK)

    _HANDLERS = {
        c.INS_SELECT: _select,
        c.INS_READ_BINARY: _read_binary,
        c.INS_VERIFY: _verify,
        c.INS_RESET_RETRY_COUNTER: _reset_retry_counter,
        c.INS_INTERNAL_AUTHENTICATE: _internal_authenticate,
    }
