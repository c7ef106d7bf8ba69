"""What the console shows and does, from the same functions as the CLI: the status report
(:func:`eeszt_gw.ops.status.collect`), dead letters (:mod:`eeszt_gw.ops.dlq`) and the audit
trail (:func:`eeszt_gw.ops.audit.story`).

Browsing a queue takes its messages with ``basic_get`` and puts them back: two browsers at the
same moment would each miss what the other holds. One lock serializes every browse of this
process, and the status report is kept for ``refresh`` seconds so that many open pages cost one
report. Everything returned is TAJ-masked (:func:`masked`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import Any

from schemas.audit import AuditKind, mask_text

from eeszt_gw.amqp import BrokerTLS
from eeszt_gw.config import UsageError
from eeszt_gw.ops import audit as ops_audit
from eeszt_gw.ops import dlq as ops_dlq
from eeszt_gw.ops.dead_letters import Selector
from eeszt_gw.ops.status import StatusOptions, collect
from eeszt_gw.ops.when import parse_optional, parse_when

from .settings import ConsoleSettings

#: keys whose value the operator acts on (a dead letter's id): kept as the CLI keeps them
_ID_KEYS = frozenset({"message_id", "ref"})


def masked(value: Any, key: str = "") -> Any:
    """``value`` with every string TAJ-masked, in any nesting (dead-letter ids excepted, as in
    ``eeszt-gw dlq list``: they hold no TAJ and the operator acts on them)."""
    if isinstance(value, str):
        return value if key in _ID_KEYS else mask_text(value)
    if isinstance(value, dict):
        return {mask_text(str(k)): masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    return value


class Gateway:
    """The console's one door to the broker."""

    def __init__(self, settings: ConsoleSettings, tls: BrokerTLS | None) -> None:
        self.settings, self.tls = settings, tls
        self.url = settings.broker_url
        self._lock = threading.Lock()
        self._report: tuple[float, dict[str, Any]] | None = None

    # --- overview ---------------------------------------------------------------------------
    def options(self) -> StatusOptions:
        s = self.settings
        return StatusOptions(broker_url=s.broker_url, broker_tls=self.tls, pki_dir=s.pki_dir,
                             wait_s=s.wait_s, time_limit_s=s.time_limit_s,
                             cert_warn_days=s.cert_warn_days, browse_cap=s.browse_cap,
                             use_rabbitmqctl=s.rabbitmqctl, rabbitmq_node=s.rabbitmq_node)

    def overview(self) -> dict[str, Any]:
        """The status report (as ``eeszt-gw status --json``), at most ``refresh_s`` old."""
        with self._lock:
            cached = self._report
            if cached and time.monotonic() - cached[0] < self.settings.refresh_s:
                return cached[1]
            report = masked(collect(self.options()))
            self._report = (time.monotonic(), report)
            return report

    # --- dead letters -----------------------------------------------------------------------
    @staticmethod
    def selector(*, ids: tuple[str, ...] = (), service: str = "", code: str = "",
                 reason: str = "", since: str = "", until: str = "", older_than: str = "",
                 limit: int | None = None) -> Selector:
        """A :class:`Selector` from form fields; raises UsageError naming the field."""
        ends = [parse_when(v, flag=f) for v, f in ((until, "until"), (older_than, "older than"))
                if v]
        return Selector(ids=ids, service=service or None, code=code or None,
                        reason=reason or None, since=parse_optional(since, "since"),
                        until=min(ends) if ends else None, limit=limit)

    def dead_letters(self, sel: Selector) -> list[dict[str, Any]]:
        with self._lock:
            return masked(ops_dlq.list_dead_letters(self.url, self.tls, sel))

    def dead_letter(self, ref: str) -> list[str]:
        with self._lock:
            return masked(ops_dlq.show_dead_letters(self.url, self.tls, Selector(ids=(ref,))))

    def change(self, kind: AuditKind, sel: Selector, *, who: str, why: str) -> dict[str, Any]:
        """Replay or purge what ``sel`` selects, audited with ``who`` and ``why``."""
        why = why.strip()
        if not why:
            raise UsageError("reason: say why (it goes into the audit trail)")
        if kind is AuditKind.PURGED and not (sel.ids or sel.has_filters):
            raise UsageError("purge: name dead letters or give a filter (older than, ...)")
        if kind is AuditKind.REPLAYED and not sel.ids:
            raise UsageError("replay: choose at least one dead letter")
        with self._lock:
            result = ops_dlq.change(self.url, self.tls, sel, kind, who=who, why=why)
            self._report = None  # the counts have changed
        return masked({"kind": kind.value, "who": result.who, "done": result.done,
                       "kept": result.kept, "missing": result.missing,
                       "audit_dropped": result.audit_dropped, "summary": result.summary(),
                       "lines": [o.line(kind.value) for o in result.outcomes],
                       "outcomes": [asdict(o) for o in result.outcomes]})

    # --- audit ------------------------------------------------------------------------------
    def story(self, ref: str, since: str = "", until: str = "") -> list[dict[str, Any]]:
        events = ops_audit.story(self.url, self.tls, ref, since=parse_optional(since, "since"),
                                 until=parse_optional(until, "until"))
        return masked([e.model_dump(mode="json") | {"line": ops_audit.line(e)} for e in events])
