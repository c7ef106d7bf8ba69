"""The two HTTP clients to EESZT keep one contract (workers/client/transport.py, the urllib3 one,
and workers/client/curl_transport.py, libcurl): every test here runs against both.

- Handshakes are paced, and a stuck one is "nothing sent" (ServiceUnavailable).
- Mutual TLS is verified: a server certificate from another CA is refused before anything is
  sent, and the simulator, which requires the access certificate, answers.
- **Nothing is sent twice**: when a kept-alive connection dies after the request went out,
  the call ends in AmbiguousOutcome and the server has seen the request once. (libcurl on its
  own would send it again on a new connection.)

Against real loopback sockets: a listener that accepts TCP connections and never answers the
TLS ClientHello (a server too busy to handshake), a TLS server that answers one request per
connection and then reads the next and hangs up, and the simulator.
"""

from __future__ import annotations

import abc
import socket
import ssl
import threading
import time

import pytest

from simulator.pki import make_ca, write_pem
from workers.client.client import TRANSPORTS, ClientFiles
from workers.errors import AmbiguousOutcome, ServiceUnavailable
from workers.client.transport import Timeouts, TlsFiles

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


@pytest.fixture(params=sorted(TRANSPORTS))
def kind(request) -> str:
    return request.param


def transport(pki, port: int, *, kind: str, connect_s: float = 5, handshakes: int = 4,
              read_s: float = 5, server_ca=None):
    files = ClientFiles.from_pki_dir(pki.directory)
    return TRANSPORTS[kind](
        base_url=f"https://localhost:{port}", handshakes=handshakes, maxsize=16,
        timeouts=Timeouts(connect=connect_s, read=read_s),
        tls=TlsFiles(client_cert=files.access_cert, client_key=files.access_key,
                     server_ca=server_ca or files.server_ca))


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_handshake_that_times_out_is_service_unavailable_not_ambiguous(pki, kind):
    listener = SilentListener()
    t = transport(pki, listener.port, kind=kind, connect_s=0.3, handshakes=2)
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


def test_new_connections_handshake_a_few_at_a_time(pki, kind):
    """Twelve threads, two handshake slots: the server never sees more than two at once."""
    listener = SilentListener()
    t = transport(pki, listener.port, kind=kind, connect_s=30, handshakes=2)
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


# --- mutual TLS, verified ---------------------------------------------------------------------
def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_the_simulator_answers_over_verified_mutual_tls(pki, simulator, kind):
    t = transport(pki, _port(simulator.base_url), kind=kind)
    try:
        resp = t.post("/services/eRecept", b"<not-soap/>", soap_action="urn:x")
    finally:
        t.close()
    # An HTTP answer, not a transport error: the handshake with the access certificate worked
    # and the simulator read the request (and refused it as SOAP).
    assert resp.status == 500 and b"Fault" in resp.body, (resp.status, resp.body[:200])


def test_a_server_certificate_from_another_ca_is_refused_before_anything_is_sent(
        pki, simulator, kind, tmp_path):
    _, other_ca = make_ca("Not EESZT's CA")
    write_pem(tmp_path / "other-ca.pem", other_ca)
    t = transport(pki, _port(simulator.base_url), kind=kind, server_ca=tmp_path / "other-ca.pem")
    try:
        with pytest.raises(ServiceUnavailable) as err:
            t.post("/services/eRecept", b"<x/>")
    finally:
        t.close()
    assert not isinstance(err.value, AmbiguousOutcome)
    assert "certificate" in str(err.value).lower() or "verify" in str(err.value).lower()


# --- nothing sent twice -----------------------------------------------------------------------
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 5\r\n\r\n<ok/>"


def read_request(tls, buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    """One HTTP/1.1 request from ``tls``, ``buf`` being what was read before it: (head, body,
    what follows), or None when the client hung up first."""
    while b"\r\n\r\n" not in buf:
        chunk = tls.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(buf) < length:
        buf += tls.recv(65536)
    return head, buf[:length], buf[length:]


class TlsServer(abc.ABC):
    """A mutual-TLS server on loopback (the simulator's server certificate; clients must show an
    access certificate): a thread per connection runs ``_serve``."""

    def __init__(self, pki) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(pki.waf_ca_cert))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @abc.abstractmethod
    def _serve(self, raw: socket.socket) -> None:
        """Speak to one accepted connection (each server below answers its own way)."""

    def close(self) -> None:
        self.sock.close()


class HangUpOnSecond(TlsServer):
    """A mutual-TLS HTTP/1.1 server that answers the first request of each connection, then
    reads the second one whole and closes the connection without an answer (a server that
    crashed, or a load balancer that dropped it). It records every request body it read."""

    def __init__(self, pki) -> None:
        self.bodies: list[bytes] = []
        super().__init__(pki)

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                self.connections += 1
                buf = b""
                for n in (1, 2):
                    request = read_request(tls, buf)
                    if request is None:
                        return
                    _head, body, buf = request
                    self.bodies.append(body)
                    if n == 1:
                        tls.sendall(OK)
        except (OSError, ssl.SSLError):
            return


def test_a_request_whose_kept_alive_connection_dies_is_ambiguous_and_never_sent_again(pki, kind):
    server = HangUpOnSecond(pki)
    t = transport(pki, server.port, kind=kind)
    try:
        first = t.post("/services/eRecept", b"<first/>")
        assert (first.status, first.body) == (200, b"<ok/>")
        with pytest.raises(AmbiguousOutcome):
            t.post("/services/eRecept", b"<second/>")  # on the kept-alive connection
        time.sleep(0.5)  # room for a resend on a new connection, if anything made one
        assert server.bodies == [b"<first/>", b"<second/>"]
        assert server.connections == 1
    finally:
        t.close()
        server.close()


def test_an_unknown_transport_name_is_refused_naming_the_field(pki):
    from workers.client.client import EesztClient

    with pytest.raises(ValueError) as err:
        EesztClient(base_url="https://localhost:1", files=ClientFiles.from_pki_dir(pki.directory),
                    transport="httpx")
    assert "transport" in str(err.value) and "'httpx'" in str(err.value)
    assert "curl" in str(err.value) and "urllib3" in str(err.value)


# --- warming the pool ---------------------------------------------------------------------------
class KeepAlive(TlsServer):
    """A mutual-TLS HTTP/1.1 server that answers every request on a connection and keeps it;
    it records (connection number, method, path, body) of each request."""

    def __init__(self, pki) -> None:
        self.requests: list[tuple[int, str, str, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(pki)

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                with self.lock:
                    self.connections += 1
                    number = self.connections
                buf = b""
                while (request := read_request(tls, buf)) is not None:
                    head, body, buf = request
                    method, path = head.split(b" ", 2)[:2]
                    with self.lock:
                        self.requests.append((number, method.decode(), path.decode(), body))
                    tls.sendall(OK)
        except (OSError, ssl.SSLError):
            return


def test_warm_opens_connections_that_the_requests_then_use(pki, kind):
    server = KeepAlive(pki)
    t = transport(pki, server.port, kind=kind)
    try:
        assert t.warm(5) == 5
        assert server.connections == 5
        assert sorted(r[1:3] for r in server.requests) == [("GET", "/")] * 5
        for i in range(5):  # one thread: each POST takes an idle, warmed connection
            resp = t.post("/services/eRecept", f"<e{i}/>".encode(), soap_action="urn:x")
            assert (resp.status, resp.body) == (200, b"<ok/>")
        posts = [r for r in server.requests if r[1] == "POST"]
        assert [r[3] for r in posts] == [f"<e{i}/>".encode() for i in range(5)]
        assert all(r[2] == "/services/eRecept" for r in posts)
        assert server.connections == 5, "a request opened a connection of its own"
    finally:
        t.close()
        server.close()


def test_warm_against_a_server_that_never_handshakes_gives_up_and_frees_its_slots(pki, kind):
    listener = SilentListener()
    t = transport(pki, listener.port, kind=kind, connect_s=0.3, handshakes=2)
    try:
        assert t.warm(3, timeout=0.6) == 0  # never raises: the first requests connect again
        with pytest.raises(ServiceUnavailable) as err:
            t.post("/services/eRecept", b"<x/>")
        # the request got a handshake slot and timed out in its own handshake: the warm-up
        # left no slot taken
        assert "handshake slot" not in str(err.value) and "timed out" in str(err.value)
    finally:
        t.close()
        listener.close()
