"""HTTPS with mutual TLS through libcurl (pycurl): the same contract as
:class:`~workers.client.transport.MtlsTransport`, with less Python per request.

Why it exists: posting a signed 4.6 KB event over a kept-alive mutual-TLS connection costs
about 350 µs of client CPU through urllib3 and ``http.client`` and about 110 µs through libcurl
(README, "The HTTP client"), and ``pycurl`` gives the GIL back for the whole exchange. The
default; ``EESZT_TRANSPORT=urllib3`` (``--transport urllib3``) chooses the other.

What it keeps of the urllib3 transport's contract (the shared tests in
``tests/integration/test_transports.py`` hold both to it):

- **Nothing is sent twice.** libcurl sends a request again, on a new connection, when a reused
  connection dies before any answer. For a POST it must first rewind the body: here the body
  comes from a read callback and the seek callback refuses every rewind, so libcurl gives up
  with ``CURLE_SEND_FAIL_REWIND`` instead, which becomes :class:`AmbiguousOutcome`.
- **What was sent decides the error.** If libcurl never read the body, nothing went out:
  :class:`ServiceUnavailable` (refused, connect or handshake timeout, TLS failure). Once it has
  read the body, a lost answer is :class:`AmbiguousOutcome`.
- **Handshakes are paced**: a new connection waits for one of ``handshakes`` slots from the
  moment libcurl opens its socket until it is connected (TCP and TLS) and reads the body.
- **Verified mutual TLS**: the server's chain against ``server_ca`` only, and its host name;
  TLS 1.2 or newer; the client certificate on every connection.
- **Keep-alive pool** of at most ``maxsize`` idle handles (one connection each); a handle taken
  when none is idle is made, and closed after use if the pool is full (urllib3's
  ``block=False``). :meth:`CurlTransport.warm` fills it before the first request.
"""

from __future__ import annotations

import io
import socket
import threading
from collections import deque

import pycurl

from ..errors import AmbiguousOutcome, ServiceUnavailable
from .transport import HttpResponse, Timeouts, TlsFiles, endpoint, on_threads


_EMPTY = io.BytesIO()  # an idle handle's body: nothing (libcurl reads only during perform)


def _no_rewind(offset: int, origin: int) -> int:
    return pycurl.SEEKFUNC_FAIL  # a resend on a new connection is refused (module docstring)


class _Handle:
    """One libcurl easy handle and its connection; used by one thread at a time."""

    __slots__ = ("curl", "slot", "slot_timed_out", "fresh", "source", "chunks", "options")

    def __init__(self, curl: pycurl.Curl) -> None:
        self.curl = curl
        self.slot = False  # holds a handshake slot now
        self.slot_timed_out = False
        self.fresh = True  # no call has completed on it yet: its first connect is ahead
        self.source = _EMPTY  # this call's body, read by the read callback
        self.chunks: list[bytes] = []  # this call's answer, written by the write callback
        self.options: tuple = ()  # (url, soap_action, timeout_ms) last set on the handle


class CurlTransport:
    """POSTs SOAP bodies over verified, mutually authenticated keep-alive connections."""

    def __init__(self, *, base_url: str, tls: TlsFiles, timeouts: Timeouts = Timeouts(),
                 maxsize: int = 32, handshakes: int = 4) -> None:
        self.base_url, _host, _port, _prefix = endpoint(base_url)
        self.timeouts = timeouts
        self.tls = tls
        for f in (tls.client_cert, tls.client_key, tls.server_ca):
            if not f.is_file():  # libcurl would only say "problem with the local certificate"
                raise FileNotFoundError(f"TLS file not found: {f}")
        self._slots = threading.BoundedSemaphore(handshakes)
        # append and pop are atomic, so no lock; racing returns may leave a handle or two
        # above maxsize, as urllib3's pool check could
        self._idle: deque[_Handle] = deque()
        self._maxsize = maxsize
        self._headers: dict[str, list[str]] = {}
        self._closed = False

    def _new(self) -> _Handle:
        c = pycurl.Curl()
        h = _Handle(c)
        for opt, value in (
            (pycurl.NOSIGNAL, 1),  # threads: no SIGALRM for timeouts
            (pycurl.POST, 1),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2),
            (pycurl.SSL_VERIFYPEER, 1),
            (pycurl.SSL_VERIFYHOST, 2),
            (pycurl.CAINFO, str(self.tls.server_ca)),
            (pycurl.SSLCERT, str(self.tls.client_cert)),
            (pycurl.SSLKEY, str(self.tls.client_key)),
            (pycurl.CONNECTTIMEOUT_MS, int(self.timeouts.connect * 1000)),
            (pycurl.SEEKFUNCTION, _no_rewind),
            (pycurl.OPENSOCKETFUNCTION, lambda purpose, addr: self._open_socket(h, addr)),
            (pycurl.READFUNCTION, self._body_reader(h)),
            (pycurl.WRITEFUNCTION, lambda chunk: h.chunks.append(chunk)),
        ):
            c.setopt(opt, value)
        c.unsetopt(pycurl.CAPATH)  # only server_ca: never the system's trust store
        return h

    # --- handshake pacing ---------------------------------------------------------------------
    def _open_socket(self, h: _Handle, addr) -> socket.socket:
        # One slot per connection: happy eyeballs may open a socket per address (::1, 127.0.0.1).
        if not h.slot:
            if h.slot_timed_out or not self._slots.acquire(timeout=self.timeouts.connect):
                h.slot_timed_out = True
                # pycurl takes only a socket: one whose connect() fails at once (an AF_UNIX
                # socket cannot connect to an IP address), so libcurl gives up: "could not
                # connect", before anything is sent.
                return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            h.slot = True
        return socket.socket(addr.family, addr.socktype, addr.protocol)  # pycurl keeps a dup

    def _body_reader(self, h: _Handle):
        """The read callback: libcurl reads the body once connected (TCP and TLS), so the first
        read also frees the handshake slot. (A separate CURLOPT_PREREQFUNCTION would take the
        GIL once more inside every perform(); this callback is needed anyway.)"""

        def read_body(size: int) -> bytes:
            if h.slot:
                self._release(h)
            return h.source.read(size)

        return read_body

    def _release(self, h: _Handle) -> None:
        if h.slot:
            h.slot = False
            self._slots.release()

    # --- the call -----------------------------------------------------------------------------
    def post(self, path: str, body: bytes, *, soap_action: str = "",
             timeout: float | None = None) -> HttpResponse:
        """POST ``body`` to ``base_url + path``.

        Raises ServiceUnavailable when nothing was sent (refused, connect timeout, TLS failure),
        AmbiguousOutcome when the request went out and the answer was lost.
        """
        if self._closed:
            raise ServiceUnavailable("the EESZT transport is closed")
        url = self.base_url + path
        read_s = self.timeouts.read if timeout is None else timeout
        try:
            h = self._idle.pop()
        except IndexError:
            h = self._new()
        c = h.curl
        h.source = source = io.BytesIO(body)
        h.chunks = chunks = []
        # The answer within read_s; a fresh handle also has its connect (TCP and TLS) ahead.
        options = (url, soap_action, int(((self.timeouts.connect if h.fresh else 0) + read_s) * 1000))
        if options != h.options:  # most calls repeat the last one's: no setopt needed
            headers = self._headers.get(soap_action)
            if headers is None:
                headers = self._headers[soap_action] = [
                    "Content-Type: text/xml; charset=utf-8", f'SOAPAction: "{soap_action}"',
                    "Expect:"]  # no 100-continue round trip
            c.setopt(pycurl.URL, url)
            c.setopt(pycurl.HTTPHEADER, headers)
            c.setopt(pycurl.TIMEOUT_MS, options[2])
            h.options = options
        c.setopt(pycurl.POSTFIELDSIZE, len(body))
        h.slot_timed_out = False
        try:
            c.perform()
        except pycurl.error as exc:
            code, text = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
            self._discard(h)
            if source.tell() == 0:  # libcurl never read the body: nothing went out
                if h.slot_timed_out:
                    raise ServiceUnavailable(
                        f"could not connect to {url}: no free handshake slot within "
                        f"{self.timeouts.connect}s (other connections are still handshaking)"
                    ) from exc
                if code == pycurl.E_OPERATION_TIMEDOUT:
                    text = f"TLS handshake or connect timed out ({self.timeouts.connect}s): {text}"
                raise ServiceUnavailable(f"could not connect to {url}: {text}") from exc
            if code == pycurl.E_OPERATION_TIMEDOUT:
                raise AmbiguousOutcome(f"no answer from {url} within {read_s}s") from exc
            raise AmbiguousOutcome(f"connection to {url} broke: {text} (curl error {code})") from exc
        finally:
            self._release(h)
        status = c.getinfo(pycurl.RESPONSE_CODE)
        h.fresh = False
        self._keep(h)
        return HttpResponse(status=status, body=b"".join(chunks))

    def warm(self, count: int, *, path: str = "/", timeout: float | None = None) -> int:
        """Open up to ``count`` kept-alive connections now, before any request needs one.

        Each is a GET of ``path`` whose answer, of any status, is dropped. ``count`` threads ask
        at once, and the handshake slots let a few connect at a time, as for any new connection.
        Returns how many are now idle in the pool. Never raises: a connection that could not be
        made is left to the first request that needs it. ``timeout`` (default: twice the
        connect timeout) bounds each GET, connect included.
        """
        count = max(0, min(count, self._maxsize - len(self._idle)))
        limit_ms = int((timeout or 2 * self.timeouts.connect) * 1000)
        opened: list[_Handle] = []

        def open_one() -> None:
            h = self._new()
            c = h.curl
            try:
                c.setopt(pycurl.URL, self.base_url + path)
                c.setopt(pycurl.HTTPGET, 1)
                c.setopt(pycurl.TIMEOUT_MS, limit_ms)
                c.perform()
                c.setopt(pycurl.POST, 1)  # back to the POSTs it is made for
            except Exception:  # best effort: the first request that needs it connects again
                self._discard(h)
                return
            finally:
                self._release(h)  # a GET reads no body, so its slot is still held
            h.fresh, h.options = False, ()  # connected; the next post sets its own options
            opened.append(h)

        on_threads(open_one, count, name="eeszt-warm")
        for h in opened:
            self._keep(h)
        return len(opened)

    def _keep(self, h: _Handle) -> None:
        h.source, h.chunks = _EMPTY, []  # the handle keeps no request or answer while idle
        if self._closed or len(self._idle) >= self._maxsize:
            self._discard(h)
        else:
            self._idle.append(h)

    @staticmethod
    def _discard(h: _Handle) -> None:
        h.curl.close()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._discard(self._idle.pop())
            except IndexError:
                return
