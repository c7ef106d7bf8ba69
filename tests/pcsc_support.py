"""Helpers for card tests: mint a virtual card's files, run pcscd, wait for PC/SC events.

Nothing here imports pyscard at import time, so the unit tests can use :func:`issue_card`
without the PC/SC stack. :func:`start_vpcd_card` is what a ``vpcd_card`` fixture calls.

pcscd: :func:`ensure_pcscd` runs ``.ci/ensure-pcscd`` (installs and starts it when needed). Only
a pcscd that script started (its PID in ``/run/eeszt-gw-pcscd.pid``) is ever stopped here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simulator.card import EszigApplet, VirtualCardFiles, VpcdCard, write_card
from simulator.card.vpcd import VPCD_PORT
from simulator.pki import make_ca

ROOT = Path(__file__).resolve().parent.parent
ENSURE_PCSCD = ROOT / ".ci" / "ensure-pcscd"
PCSCD_PIDFILE = Path(os.environ.get("EESZT_PCSCD_PIDFILE", "/run/eeszt-gw-pcscd.pid"))
READER = "Virtual PCD 00 00"  # the vpcd slot on VPCD_PORT

USER_ID = "O12345"
PIN, CAN, PUK = "123456", "654321", "12345678"
DOCUMENT = {
    "name": "Dr. Teszt Elek",
    "document_id": "123456AB",
    "taj": "111111110",
    "card_serial": "ESZIG-0001",
}


@dataclass(frozen=True)
class IssuedCard:
    files: VirtualCardFiles
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_certificate: x509.Certificate

    def applet(self) -> EszigApplet:
        return self.files.load()


def issue_card(cards_dir: Path, user_id: str = USER_ID, *, pin: str = PIN, can: str = CAN,
               puk: str = PUK, document: dict[str, Any] | None = None) -> IssuedCard:
    """A card CA and a P-256 card certificate (serialNumber = card serial), written as files."""
    document = dict(DOCUMENT if document is None else document)
    ca_key, ca_cert = make_ca("Simulated eSZIG card CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "HU"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, document.get("card_serial", "ESZIG-0000")),
        x509.NameAttribute(NameOID.COMMON_NAME, document.get("name", user_id)),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = write_card(cards_dir, user_id, key=key, certificate=cert, pin=pin, can=can, puk=puk,
                       document=document)
    return IssuedCard(files, key, cert, ca_cert)


# --- pcscd ------------------------------------------------------------------------------------
def ensure_pcscd() -> str:
    """Run ``.ci/ensure-pcscd``; fails the test (never skips) when it cannot."""
    proc = subprocess.run([str(ENSURE_PCSCD)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{ENSURE_PCSCD} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def _live_pcscd(pid: int) -> bool:
    """True for a running pcscd; False once it exited (a zombie counts as exited: PID 1 may
    reap the orphans of ensure-pcscd late)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "pcscd" and state != "Z"


def our_pcscd_pid() -> int | None:
    """The PID of the pcscd that ensure-pcscd started, if it still runs."""
    try:
        pid = int(PCSCD_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _live_pcscd(pid) else None


def stop_our_pcscd(timeout: float = 10.0) -> int:
    """SIGTERM the pcscd that ensure-pcscd started and wait for it to exit; returns its PID.

    Fails the test when pcscd runs but was not started by ensure-pcscd (we stop only our own).
    """
    pid = our_pcscd_pid()
    if pid is None:
        pytest.fail(f"the running pcscd was not started by {ENSURE_PCSCD} (no live PID in "
                    f"{PCSCD_PIDFILE}); refusing to stop a pcscd this test did not start")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _live_pcscd(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"pcscd {pid} did not exit within {timeout}s of SIGTERM")
        time.sleep(0.02)
    return pid


# --- PC/SC waits (pyscard imported lazily) ------------------------------------------------------
def wait_card_state(reader: str, *, present: bool, timeout: float = 5.0) -> None:
    """Block until pcscd reports ``reader`` with (or without) a card; fails after ``timeout``."""
    from smartcard import scard

    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)
    try:
        states = [(reader, scard.SCARD_STATE_UNAWARE)]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            hresult, new_states = scard.SCardGetStatusChange(
                context, max(0, int(remaining * 1000)), states)
            if hresult == scard.SCARD_S_SUCCESS:
                event = new_states[0][1]
                if bool(event & scard.SCARD_STATE_PRESENT) == present:
                    return
                states = [(reader, event & ~scard.SCARD_STATE_CHANGED)]
            elif hresult != scard.SCARD_E_TIMEOUT:
                time.sleep(0.05)
            if remaining <= 0:
                pytest.fail(f"{reader!r}: card {'in' if present else 'out'} not seen "
                            f"within {timeout}s (last hresult {hresult:#x})")
    finally:
        scard.SCardReleaseContext(context)


def connect(reader_name: str = READER, timeout: float = 5.0) -> Any:
    """A connected pyscard ``CardConnection`` to the card in ``reader_name``."""
    from smartcard.System import readers

    wait_card_state(reader_name, present=True, timeout=timeout)
    reader = next(r for r in readers() if str(r) == reader_name)
    connection = reader.createConnection()
    try:
        connection.connect()
    except BaseException:
        close(connection)
        raise
    return connection


def close(connection: Any) -> None:
    """Disconnect (powers the card off) and release the connection's PC/SC context.

    Errors are ignored: after a removal or a pcscd restart the handles are already dead, and
    pyscard's ``__del__`` would otherwise raise about them later, in an unrelated test.
    """
    from smartcard.Exceptions import CardConnectionException

    for step in (connection.disconnect, connection.release):
        try:
            step()
        except CardConnectionException:
            pass
    # a context from before a pcscd restart cannot be released: forget it (on the wrapped
    # PCSCCardConnection, which createConnection() hides behind a CardConnectionDecorator)
    getattr(connection, "component", connection).hcontext = None


@contextmanager
def session(reader_name: str = READER, timeout: float = 5.0) -> Iterator[Any]:
    """``with session() as connection:`` a connected pyscard connection, closed afterwards."""
    connection = connect(reader_name, timeout)
    try:
        yield connection
    finally:
        close(connection)


def transmit(connection: Any, apdu: bytes) -> tuple[bytes, int]:
    data, sw1, sw2 = connection.transmit(list(apdu))
    return bytes(data), (sw1 << 8) | sw2


def start_vpcd_card(applet: EszigApplet, *, port: int = VPCD_PORT,
                    reader: str = READER) -> VpcdCard:
    """The card inserted into vpcd from a thread, once pcscd reports it present in ``reader``."""
    card = VpcdCard(applet, port=port, backoff_max_s=0.2).start()
    if not card.wait_connected(10):
        card.stop()
        pytest.fail(f"the virtual card could not connect to vpcd on port {port}")
    wait_card_state(reader, present=True)
    return card


def stop_vpcd_card(card: VpcdCard, *, reader: str = READER) -> None:
    """Stop the card and wait (best effort) until pcscd reports the slot empty."""
    card.stop()
    try:
        wait_card_state(reader, present=False, timeout=3)
    except BaseException:  # noqa: BLE001 - never mask the test's own result
        pass
