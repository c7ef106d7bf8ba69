"""Prometheus metrics of a card bridge: logins answered, card and pcscd presence.

- ``eeszt_bridge_logins_total{workstation,outcome}`` counter; outcome: ``rid`` (login done,
  by card or MobilToken: the eID server gave an rID), the code of an error answer
  (``wrong_pin``, ``wrong_code``, ``no_card``, ``refused``, ...), or ``dropped`` (not answered
  at all: forged or unreadable)
- ``eeszt_bridge_card_present`` gauge: 1 while a card is in the watched reader
- ``eeszt_bridge_pcscd_up`` gauge: 1 while pcscd answers

The gauges are read from the :class:`~card_bridge.presence.PresenceMonitor` at scrape time.
Nothing secret is a label: no user id, no PIN, no rID.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.card import CardAnswer, CardErrorCode

if TYPE_CHECKING:
    from .presence import PresenceMonitor

DROPPED = "dropped"


class PresenceCollector(Collector):
    """``eeszt_bridge_card_present`` and ``eeszt_bridge_pcscd_up`` from the monitor's state."""

    def __init__(self, presence: PresenceMonitor | Any | None = None) -> None:
        self.presence = presence  # anything with a ``state`` (a Presence); None: not watched

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("eeszt_bridge_card_present", "")
        yield GaugeMetricFamily("eeszt_bridge_pcscd_up", "")

    def collect(self) -> Iterator[Metric]:
        if self.presence is None:
            return
        state = self.presence.state
        yield GaugeMetricFamily("eeszt_bridge_card_present", "1 while a card is in the watched "
                                "reader, else 0", value=1.0 if state.card else 0.0)
        yield GaugeMetricFamily("eeszt_bridge_pcscd_up", "1 while pcscd answers, else 0",
                                value=1.0 if state.service else 0.0)


class BridgeMetrics:
    """The metrics of one bridge process; :meth:`answered` is called once per challenge."""

    def __init__(self, registry: CollectorRegistry, *, workstation: str,
                 presence: PresenceMonitor | Any | None = None) -> None:
        self.workstation = workstation
        self._logins = Counter("eeszt_bridge_logins", "Login challenges handled by this card "
                               "bridge, by outcome (rid, an error code, or dropped)",
                               ("workstation", "outcome"), registry=registry)
        self._by_outcome = {o: self._logins.labels(workstation=workstation, outcome=o)
                            for o in ("rid", *(c.value for c in CardErrorCode), DROPPED)}
        self._presence = PresenceCollector(presence)
        registry.register(self._presence)

    @property
    def presence(self) -> Any:
        return self._presence.presence

    @presence.setter
    def presence(self, monitor: Any) -> None:
        self._presence.presence = monitor

    def answered(self, answer: CardAnswer | None) -> None:
        """Count one handled challenge: its answer, or None when it was not answered."""
        if answer is None:
            outcome = DROPPED
        elif answer.outcome == "error":
            outcome = answer.error.value if answer.error is not None else "error"
        else:
            outcome = answer.outcome
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self._logins.labels(
                workstation=self.workstation, outcome=outcome)
        child.inc()
