"""The virtual eSZIG card: the applet, its files, and two ways to plug it in.

==========================  ==============================================================
:mod:`.applet`              :class:`EszigApplet`: the APDU contract of :mod:`schemas.card`
                            (pure, in memory, thread-safe)
:mod:`.files`               :func:`load_card` / :func:`write_card`: ``cards/<user_id>.*``
:mod:`.vpcd`                :class:`VpcdCard`: the card in pcscd's vpcd reader (PC/SC tests)
this module                 :class:`InProcessCard`: the card without PC/SC (embedded demo)
==========================  ==============================================================

Errors: :class:`CardRemoved` (the card was pulled out, or was never in the reader) is the only
exception :class:`InProcessCard` raises for a card event; status words are data, not errors.
"""

from __future__ import annotations

import threading
from types import TracebackType

from simulator.card.applet import EszigApplet
from simulator.card.files import VirtualCardFiles, load_card, write_card
from simulator.card.vpcd import VpcdCard, run_virtual_card

__all__ = [
    "CardRemoved",
    "EszigApplet",
    "InProcessCard",
    "VirtualCardFiles",
    "VpcdCard",
    "load_card",
    "run_virtual_card",
    "write_card",
]


class CardRemoved(Exception):
    """The card is not in the reader, or was removed since :meth:`InProcessCard.connect`."""


class InProcessCard:
    """An :class:`EszigApplet` behind a PC/SC-like seam, for the embedded demo and unit tests.

    Mirrors what a card in a reader does: :meth:`connect` powers the card up, :meth:`disconnect`
    powers it off (the PIN-verified state is lost); :meth:`remove` pulls the card out, after
    which :meth:`transmit` raises :class:`CardRemoved` until the card is inserted again **and**
    :meth:`connect` is called again (an old connection does not survive a removal).
    """

    def __init__(self, applet: EszigApplet, *, present: bool = True) -> None:
        self.applet = applet
        self._lock = threading.Lock()
        self._present = present
        self._insertions = 1 if present else 0
        self._connected_to: int | None = None  # the insertion a connection belongs to

    def __repr__(self) -> str:
        return f"InProcessCard(present={self._present}, connected={self.connected})"

    @property
    def present(self) -> bool:
        """True while the card is in the (virtual) reader."""
        return self._present

    @property
    def connected(self) -> bool:
        return self._present and self._connected_to == self._insertions

    @property
    def atr(self) -> bytes:
        return self.applet.atr

    def insert(self) -> None:
        """Put the card into the reader (a no-op when it is already there)."""
        with self._lock:
            if not self._present:
                self._present = True
                self._insertions += 1

    def remove(self) -> None:
        """Pull the card out: it loses power, and any connection is gone."""
        with self._lock:
            self._present = False  # _connected_to stays: that connection is now stale
            self.applet.power_off()

    def connect(self) -> None:
        """Power the card up for a new session. Raises :class:`CardRemoved` when absent."""
        with self._lock:
            if not self._present:
                raise CardRemoved("no card in the reader")
            if self._connected_to != self._insertions:
                self.applet.reset()
                self._connected_to = self._insertions

    def disconnect(self) -> None:
        """End the session and power the card off (idempotent)."""
        with self._lock:
            if self._connected_to is not None:
                self._connected_to = None
                self.applet.power_off()

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one command APDU; returns (response data, SW as an int such as 0x9000).

        Raises :class:`CardRemoved` when the card is absent or was removed since
        :meth:`connect`, and :class:`RuntimeError` when :meth:`connect` was never called.
        """
        with self._lock:
            if not self._present:
                raise CardRemoved("the card was removed")
            if self._connected_to is None:
                raise RuntimeError("InProcessCard.transmit before connect()")
            if self._connected_to != self._insertions:
                raise CardRemoved("the card was removed since connect(); connect again")
        response = self.applet.process(bytes(apdu))
        return response[:-2], int.from_bytes(response[-2:], "big")

    def __enter__(self) -> InProcessCard:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()
