"""The eSZIG applet in memory: every APDU and status word of schemas/card.py, and the files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from schemas import card as c
from schemas.card import SW
from simulator.card import CardRemoved, EszigApplet, InProcessCard, VirtualCardFiles, load_card
from simulator.card.applet import make_atr, parse_apdu
from tests.pcsc_support import CAN, DOCUMENT, PIN, PUK, USER_ID, IssuedCard, issue_card

SELECT_APPLET = bytes([0x00, c.INS_SELECT, 0x04, 0x00, len(c.AID)]) + c.AID
NONCE = bytes(range(32))


def select_file(fid: bytes) -> bytes:
    return bytes([0x00, c.INS_SELECT, 0x02, 0x0C, 0x02]) + fid


def read_binary(offset: int, le: int) -> bytes:
    return bytes([0x00, c.INS_READ_BINARY, offset >> 8, offset & 0xFF, le & 0xFF])


def verify_pin(pin: str) -> bytes:
    return bytes([0x00, c.INS_VERIFY, 0x00, c.P2_PIN, len(pin)]) + pin.encode()


def verify_can(can: str) -> bytes:
    return bytes([0x00, c.INS_VERIFY, 0x00, c.P2_CAN, len(can)]) + can.encode()


PIN_STATUS = bytes([0x00, c.INS_VERIFY, 0x00, c.P2_PIN])


def reset_retry_counter(puk: str, new_pin: str) -> bytes:
    data = (puk + new_pin).encode()
    return bytes([0x00, c.INS_RESET_RETRY_COUNTER, 0x00, c.P2_PIN, len(data)]) + data


def internal_authenticate(nonce: bytes = NONCE) -> bytes:
    return bytes([0x00, c.INS_INTERNAL_AUTHENTICATE, 0x00, 0x00, len(nonce)]) + nonce + b"\x00"


def run(applet: EszigApplet, apdu: bytes) -> tuple[bytes, int]:
    response = applet.process(apdu)
    return response[:-2], int.from_bytes(response[-2:], "big")


def sw(applet: EszigApplet, apdu: bytes) -> int:
    return run(applet, apdu)[1]


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> IssuedCard:
    return issue_card(tmp_path_factory.mktemp("pki") / "cards")


@pytest.fixture
def applet(issued: IssuedCard) -> EszigApplet:
    """A fresh card (full PIN counters), not yet selected."""
    return issued.applet()


@pytest.fixture
def selected(applet: EszigApplet) -> EszigApplet:
    assert sw(applet, SELECT_APPLET) == SW.OK
    return applet


def read_file(applet: EszigApplet, fid: bytes, chunk: int = c.MAX_READ) -> bytes:
    assert sw(applet, select_file(fid)) == SW.OK
    out = b""
    while True:
        data, status = run(applet, read_binary(len(out), chunk))
        if status == SW.WRONG_OFFSET:
            return out
        assert status == SW.OK
        assert 0 < len(data) <= min(chunk or 256, c.MAX_READ)
        out += data


# --- SELECT ---------------------------------------------------------------------------------
def test_select_applet_by_aid(applet: EszigApplet) -> None:
    # Given a card just powered up / When the eSZIG AID is selected / Then 9000
    assert run(applet, SELECT_APPLET) == (b"", SW.OK)


def test_select_other_aid_is_not_found(applet: EszigApplet) -> None:
    other = bytes.fromhex("A000000063504B43532D3135")
    assert sw(applet, bytes([0, 0xA4, 4, 0, len(other)]) + other) == SW.FILE_NOT_FOUND
    # and the applet is still not selected
    assert sw(applet, select_file(c.FID_DOCUMENT)) == SW.NOT_SELECTED


@pytest.mark.parametrize("apdu", [
    select_file(c.FID_CERTIFICATE), read_binary(0, 16), PIN_STATUS, verify_pin(PIN),
    verify_can(CAN), reset_retry_counter(PUK, "111111"), internal_authenticate(),
], ids=["select-file", "read", "pin-status", "verify-pin", "verify-can", "rrc", "int-auth"])
def test_every_command_before_select_applet_is_6999(applet: EszigApplet, apdu: bytes) -> None:
    assert sw(applet, apdu) == SW.NOT_SELECTED
    assert applet.pin_tries_left == c.PIN_TRIES


def test_select_unknown_fid_is_not_found(selected: EszigApplet) -> None:
    assert sw(selected, select_file(b"\xE0\x01")) == SW.FILE_NOT_FOUND


def test_select_file_with_wrong_lc_is_6700(selected: EszigApplet) -> None:
    assert sw(selected, bytes([0, 0xA4, 2, 0x0C, 3, 0xC0, 0x01, 0x00])) == SW.WRONG_LENGTH


# --- READ BINARY ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [c.MAX_READ, 100, 0])
def test_certificate_read_in_chunks_equals_the_der(
    selected: EszigApplet, issued: IssuedCard, chunk: int
) -> None:
    # Given the applet selected / When EF C001 is read in chunks (Le 0 asks for 256)
    der = read_file(selected, c.FID_CERTIFICATE, chunk)
    # Then the bytes are the card certificate's DER
    assert der == issued.certificate.public_bytes(Encoding.DER)
    assert len(der) > c.MAX_READ  # really took several READ BINARY


def test_document_is_utf8_json(selected: EszigApplet) -> None:
    assert json.loads(read_file(selected, c.FID_DOCUMENT).decode("utf-8")) == DOCUMENT


def test_read_binary_is_capped_at_max_read(selected: EszigApplet) -> None:
    sw(selected, select_file(c.FID_CERTIFICATE))
    data, status = run(selected, read_binary(0, 0))  # Le 0 = 256
    assert status == SW.OK and len(data) == c.MAX_READ


def test_read_binary_offset_beyond_end_is_6b00(selected: EszigApplet) -> None:
    size = len(read_file(selected, c.FID_DOCUMENT))
    assert sw(selected, read_binary(size, 16)) == SW.WRONG_OFFSET
    assert sw(selected, read_binary(0x7FFF, 16)) == SW.WRONG_OFFSET
    data, status = run(selected, read_binary(size - 3, 16))  # a short last chunk is 9000
    assert status == SW.OK and len(data) == 3


def test_read_binary_without_le_or_without_ef(selected: EszigApplet) -> None:
    assert sw(selected, read_binary(0, 16)) == SW.FILE_NOT_FOUND  # no EF selected yet
    sw(selected, select_file(c.FID_DOCUMENT))
    assert sw(selected, bytes([0, 0xB0, 0, 0])) == SW.WRONG_LENGTH


# --- VERIFY PIN / CAN / RESET RETRY COUNTER ---------------------------------------------------
def test_correct_pin_then_status_is_9000(selected: EszigApplet) -> None:
    assert sw(selected, PIN_STATUS) == SW.WRONG_PIN | 3  # not verified, 3 tries
    assert sw(selected, verify_pin(PIN)) == SW.OK
    assert sw(selected, PIN_STATUS) == SW.OK


def test_wrong_pins_suspend_then_can_then_block_then_puk(selected: EszigApplet) -> None:
    # Given a fresh card / When the PIN is wrong once, then twice
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 2
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 1
    # Then the PIN is suspended: even the right PIN is refused until the CAN is verified
    assert sw(selected, verify_pin(PIN)) == SW.CAN_REQUIRED
    assert sw(selected, PIN_STATUS) == SW.CAN_REQUIRED
    assert selected.pin_tries_left == 1  # the refused try did not count
    # When a wrong CAN, then the right CAN, is given
    assert sw(selected, verify_can("999999")) == SW.WRONG_DATA
    assert sw(selected, verify_can(CAN)) == SW.OK
    assert sw(selected, PIN_STATUS) == SW.WRONG_PIN | 1
    # When the last try is wrong too / Then the PIN is blocked, even for the right PIN
    assert sw(selected, verify_pin("000000")) == SW.BLOCKED
    assert sw(selected, verify_pin(PIN)) == SW.BLOCKED
    assert sw(selected, PIN_STATUS) == SW.BLOCKED
    assert sw(selected, internal_authenticate()) == SW.SECURITY_NOT_SATISFIED
    # When the PUK unblocks it with a new PIN / Then the new PIN works, the old one does not
    assert sw(selected, reset_retry_counter(PUK, "246810")) == SW.OK
    assert selected.pin_tries_left == c.PIN_TRIES
    assert sw(selected, verify_pin(PIN)) == SW.WRONG_PIN | 2
    assert sw(selected, verify_pin("246810")) == SW.OK
    assert sw(selected, internal_authenticate()) == SW.OK


def test_correct_pin_resets_the_counter(selected: EszigApplet) -> None:
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 2
    assert sw(selected, verify_pin(PIN)) == SW.OK
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 2  # back to 3, minus one


def test_wrong_pin_drops_the_verified_state(selected: EszigApplet) -> None:
    sw(selected, verify_pin(PIN))
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 2
    assert sw(selected, internal_authenticate()) == SW.SECURITY_NOT_SATISFIED


def test_suspension_survives_power_off_and_needs_the_can_again(selected: EszigApplet) -> None:
    sw(selected, verify_pin("000000"))
    sw(selected, verify_pin("000000"))
    sw(selected, verify_can(CAN))
    selected.power_off()
    sw(selected, SELECT_APPLET)
    assert sw(selected, verify_pin(PIN)) == SW.CAN_REQUIRED  # the CAN was volatile
    sw(selected, verify_can(CAN))
    assert sw(selected, verify_pin(PIN)) == SW.OK


def test_wrong_puk_counts_down_and_blocks_after_ten(selected: EszigApplet) -> None:
    for left in range(c.PUK_TRIES - 1, 0, -1):
        assert sw(selected, reset_retry_counter("00000000", "111111")) == SW.WRONG_PIN | left
    assert sw(selected, reset_retry_counter("00000000", "111111")) == SW.BLOCKED
    assert sw(selected, reset_retry_counter(PUK, "111111")) == SW.BLOCKED  # PUK is dead
    assert sw(selected, verify_pin(PIN)) == SW.OK  # the PIN itself was never touched


def test_right_puk_resets_the_puk_counter(selected: EszigApplet) -> None:
    sw(selected, reset_retry_counter("00000000", "111111"))
    assert selected.puk_tries_left == c.PUK_TRIES - 1
    assert sw(selected, reset_retry_counter(PUK, "111111")) == SW.OK
    assert selected.puk_tries_left == c.PUK_TRIES


@pytest.mark.parametrize("apdu, expected", [
    (verify_pin("12345"), SW.WRONG_LENGTH),
    (verify_pin("1234567"), SW.WRONG_LENGTH),
    (verify_pin("12345a"), SW.WRONG_DATA),
    (verify_can("12345"), SW.WRONG_LENGTH),
    (verify_can("12a456"), SW.WRONG_DATA),
    (bytes([0, 0x20, 0, c.P2_CAN]), SW.WRONG_LENGTH),
    (reset_retry_counter(PUK, "12345"), SW.WRONG_LENGTH),
    (reset_retry_counter("1234567a", "123456"), SW.WRONG_DATA),
    (bytes([0, 0x20, 0, 0x83, 6]) + b"123456", SW.WRONG_DATA),
], ids=["pin-short", "pin-long", "pin-letters", "can-short", "can-letters", "can-no-data",
        "rrc-short", "rrc-letters", "verify-unknown-p2"])
def test_malformed_secrets_use_no_try(selected: EszigApplet, apdu: bytes, expected: int) -> None:
    assert sw(selected, apdu) == expected
    assert selected.pin_tries_left == c.PIN_TRIES
    assert selected.puk_tries_left == c.PUK_TRIES


# --- INTERNAL AUTHENTICATE --------------------------------------------------------------------
def test_internal_authenticate_before_verify_is_6982(selected: EszigApplet) -> None:
    assert run(selected, internal_authenticate()) == (b"", SW.SECURITY_NOT_SATISFIED)


def test_internal_authenticate_signs_the_nonce(selected: EszigApplet, issued: IssuedCard) -> None:
    # Given the PIN verified / When the card signs a 32-byte nonce
    sw(selected, verify_pin(PIN))
    signature, status = run(selected, internal_authenticate())
    # Then it is an ECDSA P-256 SHA-256 DER signature the card certificate verifies
    assert status == SW.OK
    public = issued.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, NONCE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(signature, bytes(32), ec.ECDSA(hashes.SHA256()))
    # and a case-3 APDU (no Le) is accepted too
    assert sw(selected, internal_authenticate()[:-1]) == SW.OK


def test_internal_authenticate_needs_a_32_byte_nonce(selected: EszigApplet) -> None:
    sw(selected, verify_pin(PIN))
    assert sw(selected, internal_authenticate(bytes(31))) == SW.WRONG_LENGTH
    assert sw(selected, internal_authenticate(bytes(33))) == SW.WRONG_LENGTH


def test_power_off_and_reset_drop_verified_state_and_selection(selected: EszigApplet) -> None:
    for drop in (selected.power_off, selected.reset):
        sw(selected, SELECT_APPLET)
        sw(selected, verify_pin(PIN))
        drop()
        assert sw(selected, internal_authenticate()) == SW.NOT_SELECTED
        sw(selected, SELECT_APPLET)
        assert sw(selected, internal_authenticate()) == SW.SECURITY_NOT_SATISFIED


def test_pin_counter_persists_across_power_off(selected: EszigApplet) -> None:
    sw(selected, verify_pin("000000"))
    selected.power_off()
    sw(selected, SELECT_APPLET)
    assert sw(selected, verify_pin("000000")) == SW.WRONG_PIN | 1


# --- generic errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("apdu, expected", [
    (bytes([0x80, 0xA4, 4, 0, len(c.AID)]) + c.AID, SW.CLA_NOT_SUPPORTED),
    (bytes([0x00, 0xCA, 0x9F, 0x7F, 0]), SW.INS_NOT_SUPPORTED),
    (b"\x00\xa4\x04", SW.WRONG_LENGTH),
    (bytes([0, 0xA4, 4, 0, 0x0B]) + c.AID, SW.WRONG_LENGTH),  # Lc says 11, 10 follow
    (bytes([0, 0xA4, 4, 0, 0x00, 0x00, 0x0A]) + c.AID, SW.WRONG_LENGTH),  # extended length
])
def test_generic_errors(applet: EszigApplet, apdu: bytes, expected: int) -> None:
    assert sw(applet, apdu) == expected


def test_unknown_ins_after_select_is_6d00(selected: EszigApplet) -> None:
    assert sw(selected, bytes([0x00, 0x84, 0, 0, 8])) == SW.INS_NOT_SUPPORTED


def test_parse_apdu_cases() -> None:
    assert parse_apdu(b"\x00\x20\x00\x81").le is None  # case 1
    assert parse_apdu(b"\x00\xb0\x00\x00\x00").le == 256  # case 2, Le 00
    case4 = parse_apdu(b"\x00\x88\x00\x00\x02\xaa\xbb\x00")
    assert case4 is not None and case4.data == b"\xaa\xbb" and case4.le == 256


# --- ATR ----------------------------------------------------------------------------------------
def test_atr_is_t1_with_a_correct_tck(applet: EszigApplet) -> None:
    atr = applet.atr
    assert atr[0] == 0x3B and atr[1] & 0x0F == len(atr) - 5  # TS, T0: K historical bytes
    assert atr[2:4] == b"\x80\x01"  # TD1 -> TD2 = T=1
    tck = 0
    for b in atr[1:]:
        tck ^= b
    assert tck == 0  # XOR of T0..TCK is zero
    assert make_atr(b"ab")[-1] == 0x82 ^ 0x80 ^ 0x01 ^ ord("a") ^ ord("b")


# --- construction and files ---------------------------------------------------------------------
def test_constructor_rejects_bad_material(issued: IssuedCard) -> None:
    der = issued.certificate.public_bytes(Encoding.DER)
    ok = dict(key=issued.key, certificate_der=der, document={}, pin=PIN, can=CAN, puk=PUK)
    with pytest.raises(ValueError, match="PIN"):
        EszigApplet(**{**ok, "pin": "12345"})
    with pytest.raises(ValueError, match="PUK") as err:
        EszigApplet(**{**ok, "puk": "1234567x"})
    assert "1234567x" not in str(err.value)  # a secret never lands in a message
    with pytest.raises(ValueError, match="does not match"):
        EszigApplet(**{**ok, "key": ec.generate_private_key(ec.SECP256R1())})
    with pytest.raises(ValueError, match="P-256"):
        EszigApplet(**{**ok, "key": ec.generate_private_key(ec.SECP384R1())})


def test_repr_shows_no_secret(applet: EszigApplet) -> None:
    assert PIN not in repr(applet) and PUK not in repr(applet) and CAN not in repr(applet)


def test_load_card_from_pki_dir_or_cards_dir(issued: IssuedCard) -> None:
    cards = issued.files.secrets.parent
    for directory in (cards.parent, cards):
        card = load_card(directory, USER_ID)
        assert card.certificate_der == issued.certificate.public_bytes(Encoding.DER)
    assert stat.S_IMODE(os.stat(issued.files.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(issued.files.secrets).st_mode) == 0o600
    assert x509.load_pem_x509_certificate(issued.files.certificate.read_bytes()) == \
        issued.certificate


def test_load_card_errors(issued: IssuedCard, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="O99999"):
        load_card(issued.files.secrets.parent, "O99999")
    with pytest.raises(ValueError, match="user id"):
        load_card(tmp_path, "../etc/passwd")
    cards = tmp_path / "cards"
    cards.mkdir()
    for f in (issued.files.key, issued.files.certificate):
        (cards / f.name).write_bytes(f.read_bytes())
    broken = VirtualCardFiles.at(cards, USER_ID)
    broken.secrets.write_text(json.dumps({"pin": "12", "can": CAN, "puk": PUK}))
    with pytest.raises(ValueError, match="PIN") as err:
        load_card(tmp_path, USER_ID)
    assert '"12"' not in str(err.value)
    broken.secrets.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_card(tmp_path, USER_ID)


# --- InProcessCard ------------------------------------------------------------------------------
def test_in_process_card_round_trip(applet: EszigApplet) -> None:
    card = InProcessCard(applet)
    with card:
        assert card.transmit(SELECT_APPLET) == (b"", 0x9000)
        assert card.transmit(verify_pin(PIN)) == (b"", 0x9000)
        signature, status = card.transmit(internal_authenticate())
        assert status == 0x9000 and signature[0] == 0x30  # DER SEQUENCE
    # disconnect powered the card off: a new session starts unverified and unselected
    card.connect()
    assert card.transmit(internal_authenticate())[1] == SW.NOT_SELECTED


def test_in_process_card_removal(applet: EszigApplet) -> None:
    card = InProcessCard(applet)
    card.connect()
    card.transmit(SELECT_APPLET)
    card.remove()
    assert not card.present
    with pytest.raises(CardRemoved):
        card.transmit(SELECT_APPLET)
    with pytest.raises(CardRemoved):
        card.connect()
    card.insert()
    with pytest.raises(CardRemoved):  # the old connection does not survive a removal
        card.transmit(SELECT_APPLET)
    card.connect()
    assert card.transmit(SELECT_APPLET)[1] == 0x9000


def test_in_process_card_absent_and_unconnected(applet: EszigApplet) -> None:
    with pytest.raises(CardRemoved):
        InProcessCard(applet, present=False).transmit(SELECT_APPLET)
    with pytest.raises(RuntimeError, match="connect"):
        InProcessCard(applet).transmit(SELECT_APPLET)
