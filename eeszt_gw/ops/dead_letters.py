"""What a dead letter is, which ones a command selects, and how ``list`` and ``show`` print one.

:class:`DeadLetter` reads one message of ``eeszt.dlq`` (any message: a body that is not UTF-8,
not JSON, nested too deep or huge is ``unreadable: <why>``; one without any id is named by
``sha256:<first 16 hex digits of its body>``); :class:`Selector` is the filter the commands
share; :func:`summary` and :func:`render` are what ``list`` and ``show`` print, control
characters escaped, long values cut and TAJs masked. The broker side and the commands are in
:mod:`eeszt_gw.ops.dlq`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Any

import pika

from schemas.audit import mask_text
from schemas.soap import OPERATION_OF
from schemas.strict_json import read_object
from schemas.wire import H_CODE, H_IDEMPOTENCY_KEY, H_MESSAGE_ID, H_REASON, H_TYPE

from eeszt_gw.config import UsageError

from .when import parse_optional, parse_when


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f) if c not in (0x0a,)}
#: longest header value and body text ``show`` prints (the size is always given)
SHOW_HEADER_CHARS = 500
SHOW_BODY_CHARS = 20_000


def _printable(text: str, limit: int) -> str:
    """``text`` with control characters escaped (no terminal escapes from a message), cut."""
    cut = text[:limit].translate(_CONTROL)
    return cut + (f"… ({len(text)} characters)" if len(text) > limit else "")


@dataclass
class DeadLetter:
    """One message of ``eeszt.dlq``, still unacknowledged on the browsing channel."""

    tag: int
    body: bytes
    props: pika.BasicProperties
    headers: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        return "" if value is None else _text(value)

    @property
    def message_id(self) -> str:
        given = self.headers.get(H_MESSAGE_ID)  # a header of another type is no id
        return (_text(given) if isinstance(given, (str, bytes)) else "") or \
            _text(self.props.message_id or "")

    @property
    def ref(self) -> str:
        """How commands name it: its message id, else ``sha256:`` and 16 hex digits of the body."""
        return self.message_id or self.digest

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.body).hexdigest()[:16]}"

    @property
    def dead_at(self) -> datetime | None:
        ts = self.props.timestamp
        try:
            return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None
        except (TypeError, ValueError, OverflowError, OSError):  # a timestamp no clock has
            return None

    @cached_property
    def _read(self) -> tuple[dict[str, Any] | None, str]:
        return read_object(self.body)

    @property
    def payload(self) -> dict[str, Any]:
        return self._read[0] or {}

    @property
    def unreadable(self) -> str:
        """Why the body is not a JSON object ("" when it is)."""
        return self._read[1]

    @property
    def message_type(self) -> str:
        payload = self.payload.get("payload")
        kind = payload.get("type") if isinstance(payload, dict) else None
        return self.header(H_TYPE) or (kind if isinstance(kind, str) else "")

    @property
    def service(self) -> str:
        op = OPERATION_OF.get(self.message_type)
        return op[0].name if op else ""

    @property
    def idempotency_key(self) -> str:
        key = self.header(H_IDEMPOTENCY_KEY) or self.payload.get("idempotency_key", "")
        return key if isinstance(key, str) else ""


@dataclass(frozen=True)
class Selector:
    """Which dead letters a command acts on: all the given criteria must match."""

    ids: tuple[str, ...] = ()
    service: str | None = None
    reason: str | None = None
    code: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "Selector":
        ids = getattr(ns, "ids", None) or ([ns.message_id] if getattr(ns, "message_id", None) else [])
        until = [parse_when(v, flag=f) for v, f in ((ns.until, "--until"),
                                                    (ns.older_than, "--older-than")) if v]
        if ns.limit is not None and ns.limit < 1:
            raise UsageError("--limit: must be at least 1")
        return cls(ids=tuple(ids), service=ns.service, reason=ns.reason, code=ns.code,
                   since=parse_optional(ns.since, "--since"),
                   until=min(until) if until else None, limit=ns.limit)

    @property
    def has_filters(self) -> bool:
        return any(v is not None for v in (self.service, self.reason, self.code, self.since,
                                           self.until))

    def matches(self, dl: DeadLetter) -> bool:
        if self.ids and not {dl.ref, dl.digest, _text(dl.props.message_id or "")} & set(self.ids):
            return False
        if self.service and dl.service.lower() != self.service.lower():
            return False
        if self.reason and self.reason.lower() not in dl.header(H_REASON).lower():
            return False
        if self.code and dl.header(H_CODE).lower() != self.code.lower():
            return False
        at = dl.dead_at
        if (self.since or self.until) and (at is None or (self.since and at < self.since)
                                           or (self.until and at > self.until)):
            return False
        return True


def _age(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "?"
    s = max(0, int((now - at).total_seconds()))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h" if h else f"{d}d"
    if h:
        return f"{h}h {m}m" if m else f"{h}h"
    return f"{m}m {s % 60}s" if m else f"{s}s"


def summary(dl: DeadLetter, now: datetime) -> dict[str, Any]:
    """What ``list`` shows of one dead letter, TAJ-masked."""
    at = dl.dead_at
    row = {"message_id": dl.ref, "service": dl.service, "type": dl.message_type,
           "code": dl.header(H_CODE), "reason": dl.header(H_REASON),
           "dead_lettered_at": at.isoformat() if at else None, "age": _age(at, now),
           "size": len(dl.body), "body": f"unreadable: {dl.unreadable}" if dl.unreadable else "ok"}
    for k, v in row.items():
        if isinstance(v, str):  # header text may hold a TAJ; the id is kept: the operator
            v = _printable(v, SHOW_HEADER_CHARS)  # acts on it
            row[k] = v if k == "message_id" else mask_text(v)
    return row


def _shorten(value: Any) -> Any:
    """Long strings (base64 documents) cut for display."""
    if isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {k: _shorten(v) for k, v in items}
        return out if isinstance(value, dict) else list(out.values())
    long = isinstance(value, str) and len(value) > 200
    return f"{value[:60]}… ({len(value)} characters)" if long else value


def render(dl: DeadLetter, now: datetime) -> str:
    """``show``: properties, headers and the body, pretty-printed and TAJ-masked."""
    at = dl.dead_at
    lines = [f"message {dl.ref}",
             f"  dead-lettered: {at.isoformat() if at else '?'} ({_age(at, now)} ago)",
             f"  service: {dl.service or '?'}   type: {dl.message_type or '?'}",
             f"  properties: message_id={_text(dl.props.message_id)} "
             f"content_type={_text(dl.props.content_type)} delivery_mode={dl.props.delivery_mode}",
             "headers:"]
    lines += [f"  {_printable(_text(k), 100)}: {_printable(_text(v), SHOW_HEADER_CHARS)}"
              for k, v in sorted(dl.headers.items(), key=lambda kv: _text(kv[0]))]
    if dl.unreadable:
        lines += [f"body ({len(dl.body)} bytes): unreadable: {dl.unreadable}; as text:",
                  _printable(_text(dl.body), 2000)]
    else:
        pretty = json.dumps(_shorten(dl.payload), indent=2, ensure_ascii=False)
        lines += [f"body ({len(dl.body)} bytes):", _printable(pretty, SHOW_BODY_CHARS)]
    return mask_text("\n".join(lines))
