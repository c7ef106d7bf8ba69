"""The virtual eSZIG card through the real PC/SC stack: pyscard -> pcscd -> vpcd -> VpcdCard.

Needs pcscd with the vsmartcard-vpcd driver: the ``pcscd`` fixture runs ``.ci/ensure-pcscd``,
which installs and starts it. These tests fail (never skip) when that is impossible.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from smartcard.Exceptions import CardConnectionException, NoCardException
from smartcard.System import readers

from schemas import card as c
from schemas.card import SW
from simulator.card import VpcdCard
from tests.pcsc_support import (
    CAN,
    DOCUMENT,
    PIN,
    READER,
    ROOT,
    USER_ID,
    IssuedCard,
    close,
    connect,
    ensure_pcscd,
    issue_card,
    our_pcscd_pid,
    session,
    start_vpcd_card,
    stop_our_pcscd,
    stop_vpcd_card,
    transmit,
    wait_card_state,
)

pytestmark = [pytest.mark.pcsc, pytest.mark.integration]

SELECT_APPLET = bytes([0x00, c.INS_SELECT, 0x04, 0x00, len(c.AID)]) + c.AID
PIN_STATUS = bytes([0x00, c.INS_VERIFY, 0x00, c.P2_PIN])
NONCE = bytes(range(100, 132))


@pytest.fixture(scope="module")
def pcscd() -> str:
    """pcscd with the vpcd reader running (installed and started when needed)."""
    return ensure_pcscd()


@pytest.fixture
def card_files(tmp_path: Path) -> IssuedCard:
    return issue_card(tmp_path / "cards")


@pytest.fixture
def vpcd_card(pcscd: str, card_files: IssuedCard) -> Iterator[VpcdCard]:
    """The virtual card in ``Virtual PCD 00 00``, served from a thread; removed afterwards."""
    card = start_vpcd_card(card_files.applet())
    try:
        yield card
    finally:
        stop_vpcd_card(card)


def verify_pin(pin: str) -> bytes:
    return bytes([0x00, c.INS_VERIFY, 0x00, c.P2_PIN, len(pin)]) + pin.encode()


def read_file(connection: object, fid: bytes) -> bytes:
    assert transmit(connection, bytes([0, c.INS_SELECT, 2, 0x0C, 2]) + fid)[1] == SW.OK
    out = b""
    while True:
        apdu = bytes([0, c.INS_READ_BINARY, len(out) >> 8, len(out) & 0xFF, c.MAX_READ])
        data, status = transmit(connection, apdu)
        if status == SW.WRONG_OFFSET:
            return out
        assert status == SW.OK
        out += data


def test_vpcd_reader_is_listed(pcscd: str) -> None:
    # Given pcscd running with vpcd / Then pyscard lists the virtual reader
    assert READER in [str(r) for r in readers()]


def test_inserted_card_is_seen_with_its_atr(vpcd_card: VpcdCard) -> None:
    # Given the virtual card connected to vpcd / When pyscard connects to the reader
    with session() as connection:
        # Then it sees the applet's ATR
        assert bytes(connection.getATR()) == vpcd_card.applet.atr


def test_select_verify_authenticate_read_round_trip(
    vpcd_card: VpcdCard, card_files: IssuedCard
) -> None:
    with session() as connection:
        # Given the applet selected
        assert transmit(connection, SELECT_APPLET) == (b"", SW.OK)
        # When the PIN is wrong once / Then 63C2, and authentication is refused
        assert transmit(connection, verify_pin("000000"))[1] == SW.WRONG_PIN | 2
        apdu = bytes([0, c.INS_INTERNAL_AUTHENTICATE, 0, 0, len(NONCE)]) + NONCE + b"\x00"
        assert transmit(connection, apdu)[1] == SW.SECURITY_NOT_SATISFIED
        # When the right PIN is given / Then the card signs the nonce with its certified key
        assert transmit(connection, verify_pin(PIN))[1] == SW.OK
        signature, status = transmit(connection, apdu)
        assert status == SW.OK
        der = read_file(connection, c.FID_CERTIFICATE)
        assert der == card_files.certificate.public_bytes(Encoding.DER)
        public = card_files.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, NONCE, ec.ECDSA(hashes.SHA256()))
        assert json.loads(read_file(connection, c.FID_DOCUMENT)) == DOCUMENT
    # closing disconnected with pyscard's default disposition, which powers the card off:
    # Then a new session starts unverified
    with session() as connection:
        assert transmit(connection, SELECT_APPLET)[1] == SW.OK
        assert transmit(connection, PIN_STATUS)[1] == SW.WRONG_PIN | 3


def test_removal_raises_card_connection_exception(vpcd_card: VpcdCard) -> None:
    with session() as connection:
        assert transmit(connection, SELECT_APPLET)[1] == SW.OK
        # When the card is pulled out
        vpcd_card.remove()
        wait_card_state(READER, present=False)
        # Then the open connection fails with CardConnectionException...
        with pytest.raises(CardConnectionException) as removed:
            transmit(connection, PIN_STATUS)
        assert removed.value.hresult in (0x80100016, 0x80100069)  # not transacted / removed
    # ...and a new one with NoCardException
    fresh = next(r for r in readers() if str(r) == READER).createConnection()
    try:
        with pytest.raises(NoCardException):
            fresh.connect()
    finally:
        close(fresh)
    # When it is inserted again / Then a new connection works
    vpcd_card.insert()
    with session() as again:
        assert transmit(again, SELECT_APPLET)[1] == SW.OK


def test_apdu_round_trip_latency_of_the_standalone_card(
    pcscd: str, card_files: IssuedCard, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given the card served by its own process (python -m simulator.card.vpcd)
    log = tmp_path / "virtual-card.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.card.vpcd", str(card_files.files.secrets.parent.parent),
         USER_ID, "--log-level", "warning"],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with session(timeout=10) as connection:
            assert transmit(connection, SELECT_APPLET)[1] == SW.OK
            # When 1000 APDUs make the round trip
            samples = []
            for _ in range(1000):
                start = time.perf_counter()
                _, status = transmit(connection, PIN_STATUS)
                samples.append(time.perf_counter() - start)
                assert status == SW.WRONG_PIN | 3
        samples.sort()
        median, p95 = statistics.median(samples) * 1e6, samples[int(0.95 * len(samples))] * 1e6
        with capsys.disabled():
            print(f"\nvirtual card APDU round trip through pcscd: median {median:.0f} µs, "
                  f"p95 {p95:.0f} µs (n={len(samples)})")
        # Then (printed, not asserted); and SIGTERM removes the card and ends the process cleanly
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, log.read_text()
    wait_card_state(READER, present=False)


def test_card_reconnects_by_itself_after_pcscd_restart(vpcd_card: VpcdCard) -> None:
    connection = connect()
    try:
        assert transmit(connection, SELECT_APPLET)[1] == SW.OK
        connections_before = vpcd_card.connection_count
        # When pcscd (the one ensure-pcscd started) is stopped
        old_pid = stop_our_pcscd()
        deadline = time.monotonic() + 5
        while vpcd_card.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not vpcd_card.connected
        with pytest.raises(CardConnectionException) as gone:
            transmit(connection, PIN_STATUS)
        assert "Service not available" in str(gone.value)
    finally:
        close(connection)  # its handle and context died with pcscd
    # and started again
    ensure_pcscd()
    assert our_pcscd_pid() not in (None, old_pid)
    # Then the card reconnects by itself and pyscard sees it again
    assert vpcd_card.wait_connected(10)
    assert vpcd_card.connection_count > connections_before
    with session(timeout=10) as again:
        assert transmit(again, SELECT_APPLET)[1] == SW.OK
        assert transmit(again, verify_pin(PIN))[1] == SW.OK


def test_can_through_pcsc(vpcd_card: VpcdCard) -> None:
    with session() as connection:
        transmit(connection, SELECT_APPLET)
        for expected in (SW.WRONG_PIN | 2, SW.WRONG_PIN | 1, SW.CAN_REQUIRED):
            assert transmit(connection, verify_pin("000000"))[1] == expected
        can = bytes([0, c.INS_VERIFY, 0, c.P2_CAN, 6]) + CAN.encode()
        assert transmit(connection, can)[1] == SW.OK
        assert transmit(connection, verify_pin(PIN))[1] == SW.OK
