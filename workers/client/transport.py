"""HTTPS with mutual TLS to the EESZT endpoints: one urllib3 keep-alive pool per process.

Threads sharing one pool beat asyncio+httpx at every latency we measured
(measured on a 2-core host). Every call has an explicit timeout. urllib3 errors are
translated into :mod:`workers.errors` here and nowhere else.

The gateway's default HTTP client is now libcurl (:mod:`workers.client.curl_transport`, the same
contract at about a third of the client CPU per request); this one is ``--transport urllib3``.
The shared pieces (:class:`TlsFiles`, :class:`Timeouts`, :class:`HttpResponse`,
:func:`endpoint`) live here.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit
from pathlib import Path

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from ..errors import AmbiguousOutcome, ServiceUnavailable


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The client side of mutual TLS: the WAF access certificate and the server's CA."""

    client_cert: Path
    client_key: Path
    server_ca: Path


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0


class _PacedHTTPSConnection(HTTPSConnection):
    """A connection whose TCP connect + TLS handshake waits for one of a few slots.

    A worker process starts with 64 threads and no connections. Without a bound, all of them
    handshake at once, times the processes: 256 mutual-TLS handshakes hit the server in the same
    second, some wait past the connect timeout, and those failures opened the circuit breaker
    at start-up with 4 processes (measured: the batch rate fell from 537/s to 87/s). With a few
    slots the handshakes queue in the client instead; each then takes milliseconds.

    urllib3 reports a handshake that timed out as a *read* timeout (the handshake runs where
    it catches socket timeouts for the read); here it becomes a ``ConnectTimeoutError``: nothing
    was sent, which the transport maps to ServiceUnavailable and not to an ambiguous outcome.
    """

    def __init__(self, *args, handshake_slots: threading.BoundedSemaphore, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_slots = handshake_slots  # shared by every connection of one pool

    def connect(self) -> None:
        wait = self.timeout if isinstance(self.timeout, (int, float)) else None
        if not self.handshake_slots.acquire(timeout=wait):
            raise ConnectTimeoutError(self, f"no free handshake slot for {self.host} within "
                                            f"{wait}s (other connections are still handshaking)")
        try:
            super().connect()
        except (socket.timeout, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError) and "timed out" not in str(exc):
                raise  # a real TLS failure (certificate, protocol): urllib3 makes it SSLError
            raise ConnectTimeoutError(self, f"TLS handshake with {self.host} timed out "
                                            f"({self.timeout}s)") from exc
        finally:
            self.handshake_slots.release()


class _PacedPool(urllib3.HTTPSConnectionPool):
    """The keep-alive pool; its connections share ``handshake_slots`` (passed as a connection
    keyword argument)."""

    ConnectionCls = _PacedHTTPSConnection


def endpoint(base_url: str) -> tuple[str, str, int, str]:
    """``(base_url without a trailing slash, host, port, path prefix)``; ValueError unless
    ``base_url`` is ``https://host[:port][/path]``."""
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"EESZT base URL must be https://host[:port][/path]: {base_url!r}")
    return url, parts.hostname, parts.port or 443, parts.path.rstrip("/")


def on_threads(fn: Callable[[], None], count: int, *, name: str) -> None:
    """Run ``fn`` on ``count`` threads at once and wait for all of them (a pool's warm-up)."""
    threads = [threading.Thread(target=fn, name=f"{name}-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


class MtlsTransport:
    """POSTs SOAP bodies over a verified, mutually authenticated keep-alive pool."""

    def __init__(self, *, base_url: str, tls: TlsFiles, timeouts: Timeouts = Timeouts(),
                 maxsize: int = 32, handshakes: int = 4) -> None:
        ctx = ssl.create_default_context(cafile=str(tls.server_ca))  # verifies chain and host
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        self.base_url, host, port, self._prefix = endpoint(base_url)
        self.timeouts = timeouts
        # One pool for the one EESZT host: a PoolManager would parse the URL and look the pool
        # up again on every call (about 4% of a worker's CPU at 800 requests/s).
        self._default_timeout = urllib3.Timeout(connect=timeouts.connect, read=timeouts.read)
        # At most ``handshakes`` new connections at a time (see _PacedHTTPSConnection).
        self._pool = _PacedPool(
            host, port, maxsize=maxsize, block=False, ssl_context=ctx,
            retries=False, timeout=self._default_timeout,
            handshake_slots=threading.BoundedSemaphore(handshakes),
        )

    def post(self, path: str, body: bytes, *, soap_action: str = "",
             timeout: float | None = None) -> HttpResponse:
        """POST ``body`` to ``base_url + path``.

        Raises ServiceUnavailable when nothing was sent (refused, connect timeout, TLS failure),
        AmbiguousOutcome when the request went out and the answer was lost.
        """
        url = self.base_url + path
        t = self._default_timeout if timeout is None else \
            urllib3.Timeout(connect=self.timeouts.connect, read=timeout)
        try:
            resp = self._pool.urlopen(
                "POST", self._prefix + path, body=body, timeout=t, retries=False,
                preload_content=True, assert_same_host=False,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{soap_action}"'},
            )
        except (ConnectTimeoutError, NewConnectionError, SSLError) as exc:
            raise ServiceUnavailable(f"could not connect to {url}: {exc}") from exc
        except ReadTimeoutError as exc:
            raise AmbiguousOutcome(f"no answer from {url} within {t.read_timeout}s") from exc
        except ProtocolError as exc:
            # The connection broke after (part of) the request went out: it may have landed.
            raise AmbiguousOutcome(f"connection to {url} broke: {exc}") from exc
        except HTTPError as exc:
            raise ServiceUnavailable(f"HTTP error talking to {url}: {exc}") from exc
        return HttpResponse(status=resp.status, body=resp.data)

    def warm(self, count: int, *, path: str = "/", timeout: float | None = None) -> int:
        """Open up to ``count`` kept-alive connections now (see ``CurlTransport.warm``): GETs
        of ``path``, all held until every one has its answer, so that each makes a connection
        of its own, then returned to the pool. Returns how many were opened. Never raises."""
        count = max(0, min(count, self._pool.pool.maxsize if self._pool.pool else 0))
        limit = timeout or 2 * self.timeouts.connect
        t = urllib3.Timeout(connect=self.timeouts.connect, read=limit)
        together = threading.Barrier(max(1, count))
        opened: list[int] = []

        def open_one() -> None:
            try:
                resp = self._pool.urlopen("GET", self._prefix + path, timeout=t, retries=False,
                                          preload_content=False, assert_same_host=False)
            except Exception:  # best effort: the first request that needs it connects again
                resp = None
            # Hold the connection until every GET has its own; a failed GET still arrives,
            # holding nothing. Broken only by a GET slower than 3 x limit: go on without it.
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(timeout=3 * limit)
            if resp is not None:
                opened.append(1)
                resp.read()
                resp.release_conn()

        on_threads(open_one, count, name="eeszt-warm")
        return len(opened)

    def close(self) -> None:
        self._pool.close()
