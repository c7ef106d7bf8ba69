"""From one AMQP delivery to a validated request, or to the reason it is refused.

:func:`read` is the first step of :meth:`workers.pipeline.Pipeline.handle`. A delivery is
refused (``Invalid``: the field and the reason, and whatever correlation fields could be
salvaged for the reply) when:

- its body is not a valid request (``RequestEnvelope.from_json``: not UTF-8, nested deeper
  than ``MAX_DEPTH``, a key twice in one object, a field problem, ``created_at`` too far
  ahead of the worker's clock);
- its AMQP ``message_id`` property is set and differs from the body's ``message_id``;
- its ``eeszt-type`` header is set (not empty) and differs from ``payload.type``;
- it was published to ``eeszt.requests`` under a routing key other than ``payload.type``
  (an unknown routing key reaches a worker through the alternate exchange, and is refused
  here). Copies the gateway moves itself (retry, park and login-wait queues, which hand
  messages back through the default exchange) carry ``eeszt-type`` instead; their routing key
  is a queue name and is not compared.

Nothing here does I/O; the pipeline replies or dead-letters.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from schemas.envelope import RequestEnvelope
from schemas.replies import describe_validation_error
from schemas.strict_json import top_level_strings
from schemas.wire import H_ATTEMPT, H_TYPE, REQUESTS_EXCHANGE

NIL: Final = uuid.UUID(int=0)
_ROUTING_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # ReplyRoutingKey
_SALVAGED: Final = frozenset({("reply_to",), ("message_id",), ("idempotency_key",),
                              ("payload", "type")})


@dataclass(frozen=True, slots=True)
class Incoming:
    """One delivery from the broker, before anything is trusted."""

    body: bytes
    queue: str
    message_type: str | None = None
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    #: the AMQP user_id property: the publisher's broker user, validated by RabbitMQ
    user_id: str | None = None
    #: where it was published (None: not known, e.g. an in-memory delivery)
    exchange: str | None = None
    routing_key: str | None = None

    @property
    def attempt(self) -> int:
        try:
            return int(self.headers.get(H_ATTEMPT, 0))
        except (TypeError, ValueError):
            return 0


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a delivery is refused, and the correlation fields known for the reply."""

    field: str
    reason: str
    #: reply_to, message_id (UUID), idempotency_key, type: those that could be read
    info: dict[str, Any]


def read(msg: Incoming, *, now: datetime | None = None) -> RequestEnvelope | Invalid:
    """The delivery's request, or why it is refused. Never raises for any body or headers."""
    try:
        request = RequestEnvelope.from_json(msg.body, now=now)
    except ValidationError as exc:
        problem = describe_validation_error(exc)
        return Invalid(problem.field or "body", problem.reason, salvage(msg.body))
    mismatch = _delivery_mismatch(msg, request)
    if mismatch is None:
        return request
    return Invalid(*mismatch, {"reply_to": request.reply_to, "message_id": request.message_id,
                               "idempotency_key": request.idempotency_key,
                               "type": request.message_type})


def _delivery_mismatch(msg: Incoming, request: RequestEnvelope) -> tuple[str, str] | None:
    """(field, reason) where the AMQP facts contradict the body, or None."""
    if msg.message_id is not None:
        try:
            same = uuid.UUID(str(msg.message_id)) == request.message_id
        except ValueError:
            same = False
        if not same:
            return ("message_id", f"the AMQP message_id property ({str(msg.message_id)[:64]!r}) "
                                  f"differs from the body's message_id ({request.message_id}); "
                                  "they must be equal")
    mtype = request.message_type
    header = msg.headers.get(H_TYPE)
    if header not in (None, "") and header != mtype:
        return (H_TYPE, f"the {H_TYPE} header ({str(header)[:64]!r}) differs from payload.type "
                        f"({mtype!r}); the routing key, the {H_TYPE} header and payload.type "
                        "must name the same type")
    if msg.exchange == REQUESTS_EXCHANGE and msg.routing_key != mtype:
        return ("routing_key", f"the routing key ({str(msg.routing_key)[:64]!r}) differs from "
                               f"payload.type ({mtype!r}); publish each request under its "
                               "payload.type")
    return None


def salvage(body: bytes | str | None) -> dict[str, Any]:
    """Correlation fields of a refused body, where they can be read at all; never raises.

    Only top-level string fields (and ``payload.type``) are read, by a scan that survives any
    nesting, duplicated keys and broken JSON; a field given twice with different values is
    not used. ``reply_to`` must be a valid routing key, ``message_id`` a UUID (else the nil
    UUID).
    """
    if isinstance(body, bytes):
        text = body.decode("utf-8", "replace")
    else:
        text = body or ""
    fields = top_level_strings(text, _SALVAGED)
    out: dict[str, Any] = {}
    reply_to = fields.get(("reply_to",))
    if reply_to is not None and _ROUTING_KEY.fullmatch(reply_to):
        out["reply_to"] = reply_to
    try:
        out["message_id"] = uuid.UUID(fields[("message_id",)])
    except (KeyError, ValueError):
        out["message_id"] = NIL
    if ("idempotency_key",) in fields:
        out["idempotency_key"] = fields[("idempotency_key",)][:128]
    if ("payload", "type") in fields:
        out["type"] = fields[("payload", "type")][:64]
    return out

