"""The mutual-TLS transport paces its handshakes and reports a stuck one as "nothing sent".

Against real loopback sockets: a listener that accepts TCP connections and never answers the
TLS ClientHello (a server too busy to handshake), so the client's handshakes stay in flight
until the test lets them go.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from workers.client import ClientFiles
from workers.errors import AmbiguousOutcome, ServiceUnavailable
from workers.transport import MtlsTransport, Timeouts, TlsFiles

pytestmark = pytest.mark.integration


class SilentListener:
    """Accepts connections, never speaks; counts them and holds them until ``release()``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.peak = 0
        self.lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.held.append(conn)
                self.peak = max(self.peak, len(self.held))

    def release(self) -> None:
        """Close what is held: the client's handshakes fail at once (EOF)."""
        with self.lock:
            held, self.held = self.held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.release()
        self.sock.close()


def transport(pki, port: int, *, connect_s: float, handshakes: int) -> MtlsTransport:
    files = ClientFiles.from_pki_dir(pki.directory)
    return MtlsTransport(base_url=f"https://localhost:{port}", handshakes=handshakes, maxsize=16,
                         timeouts=Timeouts(connect=connect_s, read=5),
                         tls=TlsFiles(client_cert=files.access_cert, client_key=files.access_key,
                                      server_ca=files.server_ca))


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_handshake_that_times_out_is_service_unavailable_not_ambiguous(pki):
    listener = SilentListener()
    t = transport(pki, listener.port, connect_s=0.3, handshakes=2)
    try:
        with pytest.raises(ServiceUnavailable) as err:
            t.post("/services/eRecept", b"<x/>")
        # Nothing was sent: not an ambiguous outcome (which would make the worker ask EESZT
        # by idempotency key before every resend) and the reason says what happened.
        assert not isinstance(err.value, AmbiguousOutcome)
        assert "TLS handshake" in str(err.value) and "timed out" in str(err.value)
    finally:
        t.close()
        listener.close()


def test_new_connections_handshake_a_few_at_a_time(pki):
    """Twelve threads, two handshake slots: the server never sees more than two at once."""
    listener = SilentListener()
    t = transport(pki, listener.port, connect_s=30, handshakes=2)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            t.post("/services/eRecept", b"<x/>")
        except BaseException as exc:  # the listener never answers: every call fails
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for th in threads:
        th.start()
    try:
        assert wait_for(lambda: listener.accepted >= 2), "the first two handshakes never started"
        time.sleep(0.5)  # room for more connections to arrive, if anything let them through
        assert listener.accepted == 2, "more handshakes started than there are slots"
        # Let each wave fail (EOF from the server); the next two take the freed slots.
        while not wait_for(lambda: not any(th.is_alive() for th in threads), 0.2):
            listener.release()
        assert listener.accepted == 12 and listener.peak <= 2
        assert len(errors) == 12
        assert all(isinstance(e, ServiceUnavailable) for e in errors), errors
    finally:
        listener.close()
        for th in threads:
            th.join(timeout=5)
        t.close()
