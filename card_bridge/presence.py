"""Watching readers and cards with raw PC/SC, surviving a pcscd restart.

pyscard's ``CardMonitor`` thread dies for good when pcscd restarts. This loop calls
``SCardGetStatusChange`` with a short timeout and re-establishes its context after the errors a
restart produces, so presence is reported again about 100 ms after pcscd is back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("eeszt_gw.card_bridge.presence")

PNP = "\\\\?PnP?\\Notification"


@dataclass(frozen=True, slots=True)
class Presence:
    service: bool  # pcscd answers
    readers: tuple[str, ...]
    card: bool  # a card is present in the watched reader
    at: float


class PresenceMonitor:
    def __init__(self, *, reader: str | None = None,
                 on_change: Callable[[Presence], None] | None = None, poll_ms: int = 500) -> None:
        self.reader = reader
        self.on_change = on_change
        self.poll_ms = poll_ms
        self.state = Presence(service=False, readers=(), card=False, at=time.time())
        self.restarts = 0  # contexts re-established after losing pcscd
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pcsc-presence", daemon=True)

    def start(self) -> "PresenceMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def wait_for(self, predicate: Callable[[Presence], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self.state):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _set(self, state: Presence) -> None:
        old = self.state
        with self._changed:
            self.state = state
            self._changed.notify_all()
        if (old.service, old.readers, old.card) != (state.service, state.readers, state.card):
            log.info("pcsc: service=%s readers=%d card=%s", state.service, len(state.readers), state.card)
            if self.on_change:
                self.on_change(state)

    def _run(self) -> None:
        from smartcard import scard as s

        lost = False
        while not self._stop.is_set():
            hresult, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
            if hresult != s.SCARD_S_SUCCESS:
                self._set(Presence(False, (), False, time.time()))
                lost = True
                self._stop.wait(0.1)
                continue
            if lost:
                self.restarts += 1
                lost = False
            try:
                lost = self._watch(s, ctx)
            finally:
                s.SCardReleaseContext(ctx)

    def _watch(self, s, ctx) -> bool:
        """Watch until pcscd goes away (True) or we are stopped (False)."""
        states: dict[str, int] = {PNP: s.SCARD_STATE_UNAWARE}
        while not self._stop.is_set():
            hresult, readers = s.SCardListReaders(ctx, [])
            if hresult == s.SCARD_E_NO_READERS_AVAILABLE:
                readers = []
            elif hresult != s.SCARD_S_SUCCESS:
                self._set(Presence(False, (), False, time.time()))
                return True
            watched = [r for r in readers if not self.reader or self.reader in r]
            for r in watched:
                states.setdefault(r, s.SCARD_STATE_UNAWARE)
            for r in list(states):
                if r != PNP and r not in watched:
                    del states[r]
            request = [(r, st) for r, st in states.items()]
            hresult, new = s.SCardGetStatusChange(ctx, self.poll_ms, request)
            if hresult in (s.SCARD_E_TIMEOUT, s.SCARD_S_SUCCESS):
                card = False
                for name, event, _atr in new or []:
                    states[name] = event & ~s.SCARD_STATE_CHANGED
                    if name != PNP and event & s.SCARD_STATE_PRESENT:
                        card = True
                if hresult == s.SCARD_E_TIMEOUT:
                    card = any(st & s.SCARD_STATE_PRESENT for r, st in states.items() if r != PNP)
                self._set(Presence(True, tuple(watched), card, time.time()))
                continue
            # SCARD_E_NO_SERVICE, SCARD_E_SERVICE_STOPPED, SCARD_E_INVALID_HANDLE, ...:
            # pcscd went away; a fresh context is needed once it is back.
            self._set(Presence(False, (), False, time.time()))
            return True
        return False
