"""Insert the virtual eSZIG card into pcscd's vpcd reader, so that PC/SC clients see a real card.

pcscd's ``vsmartcard-vpcd`` driver listens on TCP (35963 is reader ``Virtual PCD 00 00``,
35964 is ``Virtual PCD 00 01``). The card side connects: connecting inserts the card, closing
the socket removes it. The wire protocol, both directions: a 2-byte big-endian length, then that
many bytes. A 1-byte message from vpcd is control (``00`` power off, ``01`` power on, ``02``
reset: no reply; ``04``: reply with the ATR); anything longer is a command APDU, answered with the
response APDU. A reply is never empty (vpcd reads that as removal).

Latency: vpcd writes the length and the payload in two ``send()`` calls with Nagle on, so the
card side must set ``TCP_QUICKACK`` after **every** ``recv`` or each APDU waits for the 40 ms
delayed ACK. With it a round trip through pyscard takes well under a millisecond.

Security: vpcd binds 0.0.0.0 without authentication; this is test and demo equipment only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType, TracebackType

from simulator.card.applet import EszigApplet

__all__ = ["VPCD_HOST", "VPCD_PORT", "VpcdCard", "main", "run_virtual_card"]

log = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963

_POWER_OFF, _POWER_ON, _RESET, _GET_ATR = 0x00, 0x01, 0x02, 0x04
_SW_INTERNAL_ERROR = b"\x6f\x00"


def _quickack(sock: socket.socket) -> None:
    # Linux clears QUICKACK after a while: it must be set again after every recv.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class VpcdCard:
    """One virtual card in one vpcd slot. Run :meth:`serve_forever` in a thread (see :meth:`start`).

    While inserted it keeps a connection to vpcd and reconnects with backoff when pcscd goes
    away (restart). :meth:`remove` closes the connection (pcscd sees a removal) and stops
    reconnecting until :meth:`insert`. Power off and reset from pcscd are passed to the applet,
    which drops its verified state; the applet's PIN counters persist across removals.
    """

    def __init__(
        self,
        applet: EszigApplet,
        *,
        host: str = VPCD_HOST,
        port: int = VPCD_PORT,
        inserted: bool = True,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
    ) -> None:
        self.applet = applet
        self.host = host
        self.port = port
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._inserted = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._connections = 0
        self._thread: threading.Thread | None = None
        if inserted:
            self._inserted.set()

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("inserted" if self.inserted else "removed")
        return f"VpcdCard({self.host}:{self.port}, {state})"

    # --- state --------------------------------------------------------------------------------
    @property
    def inserted(self) -> bool:
        """True while the card should be in the reader (it may still be reconnecting)."""
        return self._inserted.is_set()

    @property
    def connected(self) -> bool:
        """True while a connection to vpcd is open (pcscd sees the card within about 0.4 s)."""
        return self._connected.is_set()

    @property
    def connection_count(self) -> int:
        """How many times a connection to vpcd was established (grows on each reconnect)."""
        return self._connections

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected to vpcd, at most ``timeout`` seconds; returns :attr:`connected`."""
        return self._connected.wait(timeout)

    # --- control ------------------------------------------------------------------------------
    def insert(self) -> None:
        """Put the card (back) into the reader: connect and keep reconnecting."""
        self._inserted.set()

    def remove(self) -> None:
        """Pull the card out: close the connection and stop reconnecting until :meth:`insert`."""
        self._inserted.clear()
        self._drop_connection()

    def start(self) -> VpcdCard:
        """Run :meth:`serve_forever` in a daemon thread; returns ``self``."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this VpcdCard is already running")
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"vpcd-card-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Remove the card and end :meth:`serve_forever` (joins the thread of :meth:`start`,
        waiting at most ``timeout`` seconds). To serve again: :meth:`insert`, then :meth:`start`."""
        self._stopping.set()
        self._inserted.set()  # wake a waiting loop so that it sees _stopping
        self._drop_connection()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._inserted.clear()

    def __enter__(self) -> VpcdCard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _drop_connection(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:  # wakes the serving thread's recv with EOF; it closes the socket itself
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- the loop -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Connect, serve vpcd until the connection ends, reconnect; until :meth:`stop`."""
        delay = self._backoff_initial
        while not self._stopping.is_set():
            if not self._inserted.wait(timeout=0.5):
                continue
            if self._stopping.is_set():
                break
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as exc:
                log.debug("vpcd %s:%s not reachable (%s); retry in %.2fs",
                          self.host, self.port, exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            with self._lock:
                if self._stopping.is_set() or not self._inserted.is_set():
                    sock.close()
                    continue
                self._sock = sock
                self._connections += 1
            delay = self._backoff_initial
            self._connected.set()
            log.info("virtual card inserted into vpcd %s:%s", self.host, self.port)
            try:
                self._serve(sock)
            except OSError as exc:
                log.debug("vpcd connection ended: %s", exc)
            finally:
                with self._lock:
                    self._sock = None
                self._connected.clear()
                sock.close()
                self.applet.power_off()
                log.info("virtual card out of vpcd %s:%s", self.host, self.port)
            if self._inserted.is_set() and not self._stopping.is_set():
                self._stopping.wait(self._backoff_initial)  # pcscd went away: reconnect

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)
        while True:
            header = _recv_exact(sock, 2)
            if header is None:
                return
            length = int.from_bytes(header, "big")
            message = _recv_exact(sock, length) if length else b""
            if message is None:
                return
            reply = self._handle(message)
            if reply is not None:
                sock.sendall(len(reply).to_bytes(2, "big") + reply)

    def _handle(self, message: bytes) -> bytes | None:
        if len(message) == 1:
            control = message[0]
            if control == _GET_ATR:
                return self.applet.atr
            if control == _POWER_OFF:
                self.applet.power_off()
            elif control in (_POWER_ON, _RESET):
                self.applet.reset()
            else:
                log.warning("unknown vpcd control byte %02X ignored", control)
            return None
        if not message:
            return None
        try:
            response = self.applet.process(message)
        except Exception:  # a reply is owed whatever happens: an empty one means removal
            log.exception("applet failed on INS %02X", message[1] if len(message) > 1 else 0)
            return _SW_INTERNAL_ERROR
        if log.isEnabledFor(logging.DEBUG):  # INS and SW only: data may hold a PIN
            log.debug("APDU INS %02X -> SW %s", message[1], response[-2:].hex().upper())
        return response or _SW_INTERNAL_ERROR


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``sock``, or None at EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        _quickack(sock)
        buf += chunk
    return bytes(buf)


def run_virtual_card(
    card_dir: Path, user_id: str, *, host: str = VPCD_HOST, port: int = VPCD_PORT
) -> None:
    """Insert ``user_id``'s virtual card into vpcd and serve it until SIGTERM or SIGINT.

    Raises :class:`FileNotFoundError` or :class:`ValueError` (from
    :func:`simulator.card.files.load_card`) before connecting when the card files are
    missing or malformed. Keeps reconnecting while pcscd is down. Must run in the main thread
    (it installs signal handlers, and restores the previous ones on return).
    """
    from simulator.card.files import load_card

    applet = load_card(Path(card_dir), user_id)
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    card = VpcdCard(applet, host=host, port=port)
    try:
        card.start()
        log.info("virtual card of %s serving vpcd %s:%s (SIGTERM or Ctrl-C to remove)",
                 user_id, host, port)
        while not done.wait(1.0):
            pass
    finally:
        card.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.card.vpcd CARD_DIR USER_ID [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(prog="python -m simulator.card.vpcd", description=(
        "Insert a virtual eSZIG card into pcscd's vpcd reader until SIGTERM/SIGINT."))
    parser.add_argument("card_dir", type=Path,
                        help="PKI directory holding cards/ (or the cards/ folder itself)")
    parser.add_argument("user_id", help="whose card: reads cards/<user_id>.{key,pem,json}")
    parser.add_argument("--host", default=VPCD_HOST, help="vpcd host (default %(default)s)")
    parser.add_argument("--port", type=int, default=VPCD_PORT,
                        help="vpcd port: 35963 = 'Virtual PCD 00 00', 35964 = '... 00 01'")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_virtual_card(args.card_dir, args.user_id, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
