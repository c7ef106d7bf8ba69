"""The AMQP wire format: exchanges, queues, routing keys and headers. Pure data, no I/O.

A HIS in any language publishes with a plain AMQP 0-9-1 client:

- exchange ``eeszt.requests`` (topic, durable), routing key = the payload ``type``
  (for example ``erecept.submit``), ``mandatory`` set, publisher confirms on;
- body: the request envelope as UTF-8 JSON (JSON Schema: ``eeszt-gw schema export``);
- properties: ``delivery_mode=2`` (persistent), ``content_type="application/json"``,
  ``message_id`` = the envelope's ``message_id``; headers are optional (below).

Replies arrive on exchange ``eeszt.replies`` (topic, durable) with routing key = the request's
``reply_to``; a HIS binds its own durable queue to its key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.card import CARD_EXCHANGE, LOGIN_ANSWERS_QUEUE
from schemas.services import SERVICE_BY_NAME, SERVICE_TABLE, ServiceRow

REQUESTS_EXCHANGE: Final = "eeszt.requests"
#: Unknown routing keys land here (alternate exchange) and are rejected by a worker with a reply.
UNROUTED_EXCHANGE: Final = "eeszt.requests.unrouted"
REPLIES_EXCHANGE: Final = "eeszt.replies"
#: Tokens shared between worker processes (encrypted, transient).
TOKENS_EXCHANGE: Final = "eeszt.tokens"

INTERACTIVE_QUEUE: Final = "eeszt.interactive"
BATCH_QUEUE: Final = "eeszt.batch"
DEAD_LETTER_QUEUE: Final = "eeszt.dlq"

QUEUE_CLASSES: Final[dict[str, str]] = {"interactive": INTERACTIVE_QUEUE, "batch": BATCH_QUEUE}

#: routing-key patterns bound from ``eeszt.requests`` to each work queue: ``<family>.#`` of
#: every service of its class, from the one table of services (``schemas.services``)
def bindings_of(rows: Iterable[ServiceRow]) -> dict[str, tuple[str, ...]]:
    """Work queue -> the routing-key patterns of the services of ``rows`` in its class."""
    rows = tuple(rows)
    return {queue: tuple(f"{row.family}.#" for row in rows if row.queue_class == cls)
            for cls, queue in QUEUE_CLASSES.items()}


BINDINGS: Final[dict[str, tuple[str, ...]]] = bindings_of(SERVICE_TABLE)


def queue_of_service(service: str) -> str:
    """The work queue of a service of the table (KeyError for an unknown one)."""
    return QUEUE_CLASSES[SERVICE_BY_NAME[service].queue_class]

#: Broker-side retry delays: one durable queue per tier, whose messages dead-letter back to the
#: work queue when their TTL runs out. Nothing waits in worker memory.
RETRY_TIERS_S: Final[tuple[int, ...]] = (1, 5, 30, 120, 600, 3600)

# --- headers (all optional for a HIS; the gateway sets them on what it republishes) ----------
#: the payload type; if set, it must equal the body's payload.type (workers/intake.py)
H_TYPE: Final = "eeszt-type"
H_ATTEMPT: Final = "eeszt-attempt"  # how many times the gateway has tried to deliver it
H_FIRST_SEEN: Final = "eeszt-first-seen"  # epoch ms when a worker first saw it
H_AMBIGUOUS: Final = "eeszt-ambiguous"  # a previous attempt may have landed: query first
H_STATUS_SENT: Final = "eeszt-status-sent"
#: set by a publisher on a copy it publishes again after losing the confirm of the first: the
#: first may have reached the queue too. A HIS's own client should set it in that case.
H_REPUBLISHED: Final = "eeszt-republished"  # status updates already sent (comma separated)
H_REASON: Final = "eeszt-reason"
#: an operator replayed it from the dead-letter queue (the value names who): its original
#: deadline no longer applies; the worker gives it a day from the replay and asks EESZT first
H_REPLAYED: Final = "eeszt-replayed"
H_REPLAYED_AT: Final = "eeszt-replayed-at"  # epoch ms of the replay  # dead letters: why
H_CODE: Final = "eeszt-code"  # dead letters / replies: the stable code
H_KIND: Final = "eeszt-kind"  # replies: accepted | rejected | failed | status
H_MESSAGE_ID: Final = "eeszt-message-id"
H_IDEMPOTENCY_KEY: Final = "eeszt-idempotency-key"


def retry_queue(queue: str, tier_s: int) -> str:
    """Name of the delay queue of ``queue`` for one tier, e.g. ``eeszt.batch.retry.30s``."""
    return f"{queue}.retry.{tier_s}s"


def queue_for_type(message_type: str) -> str | None:
    """The work queue a payload type is routed to, or None for an unknown type."""
    family = message_type.split(".", 1)[0]
    for queue, patterns in BINDINGS.items():
        if any(p.split(".", 1)[0] == family for p in patterns):
            return queue
    return None


# --- queue types: classic or quorum --------------------------------------------------------------
#: ``--queue-type`` / ``EESZT_QUEUE_TYPE`` of the workers and the producers: the type of every
#: durable queue the gateway declares. Every declarer of a queue must use the same one: RabbitMQ
#: refuses a redeclaration whose ``x-queue-type`` (or any other argument) differs.
QUEUE_TYPES: Final = ("classic", "quorum")
DEFAULT_QUEUE_TYPE: Final = "classic"


def check_queue_type(queue_type: str) -> str:
    """``queue_type`` if it is one of :data:`QUEUE_TYPES`, else ValueError."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"unknown queue type {queue_type!r}; use {' or '.join(QUEUE_TYPES)}")
    return queue_type


def dead_letter_to(queue: str) -> dict[str, str]:
    """Arguments that send a queue's expired (or rejected) messages to ``queue``."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


#: Set on every quorum queue because RabbitMQ's defaults differ between the versions the
#: gateway runs on (3.10 in the tests, 4.x in the manifests):
#: - ``x-delivery-limit``: 3.10 has none, 4.x defaults to 20, after which a message is dropped or
#:   dead-lettered. Browsing (``eeszt-gw dlq list``, ``status --browse-work-queues``) and every
#:   worker crash count as deliveries, so 20 could drop a dead letter an operator looked at 20
#:   times. 1000 is far beyond any honest redelivery; a message past it goes to its queue's
#:   dead-letter route (``<queue>.XQ`` for the work queues), never silently away.
#: - ``x-quorum-initial-group-size``: three replicas, what both versions use on a cluster of
#:   three or more (fewer nodes: one replica each).
QUORUM_ARGUMENTS: Final[dict[str, int]] = {"x-delivery-limit": 1000,
                                           "x-quorum-initial-group-size": 3}


def queue_arguments(queue_type: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The declaration arguments of a durable, shared queue: ``arguments`` plus its type.

    Every durable queue the gateway declares gets its arguments here, so that all declarers
    (workers, dramatiq, producers, ``eeszt-gw replies``) agree. ``x-queue-type`` is always
    explicit: a vhost whose default queue type is quorum would otherwise decide by itself.

    For ``quorum``, a queue that dead-letters (retry tiers, parked requests, login waits: each
    hands its expired messages back to a work queue) does so **at least once**
    (``x-dead-letter-strategy``, which needs ``x-overflow: reject-publish``; neither limits
    anything without a length limit). A quorum queue's default is at most once: a request
    could be dropped between a retry tier and its work queue.

    Never for exclusive, auto-delete or non-durable queues: quorum queues cannot be any of
    those, and RabbitMQ makes them classic whatever the vhost's default is.
    """
    args = dict(arguments or {})
    args["x-queue-type"] = check_queue_type(queue_type)
    if queue_type == "quorum":
        args.update(QUORUM_ARGUMENTS)
    if queue_type == "quorum" and "x-dead-letter-exchange" in args:
        if args.setdefault("x-overflow", "reject-publish") != "reject-publish":
            raise ValueError("at-least-once dead-lettering needs x-overflow reject-publish")
        args["x-dead-letter-strategy"] = "at-least-once"
    return args


def work_queue_arguments(queue: str, queue_type: str = DEFAULT_QUEUE_TYPE) -> dict[str, Any]:
    """Arguments every declarer of a work queue must use (RabbitMQ refuses a mismatch).

    They equal what dramatiq declares (``workers.broker.GatewayBroker`` builds dramatiq's
    arguments here too): rejected messages dead-letter to ``<queue>.XQ``.
    """
    return queue_arguments(queue_type, dead_letter_to(f"{queue}.XQ"))


REQUESTS_EXCHANGE_ARGUMENTS: Final[dict[str, str]] = {"alternate-exchange": UNROUTED_EXCHANGE}

# --- interactive logins (eSZIG card / MobilToken at the doctor's workstation) -----------------
#: the request waits for its doctor's login; the value is the doctor's user id
H_WAITING_LOGIN: Final = "eeszt-waiting-login"
#: set on requests a completed login released: the doctor's token is on its way to every
#: worker process, so a worker that has not received it yet waits for it instead of logging in
H_LOGIN_RELEASED: Final = "eeszt-login-released"
#: direct exchange the card bridges answer to (routing key LOGIN_ANSWER_KEY)
LOGIN_EXCHANGE: Final = "eeszt.login"
LOGIN_ANSWER_KEY: Final = "answer"
#: delayed login events (sweeps) wait here, then dead-letter to the answers queue
LOGIN_DELAY_QUEUE: Final = "eeszt.login.delay"


def login_wait_queue(user_id: str) -> str:
    """Requests of one doctor waiting for that doctor's login (durable, TTL = their deadline)."""
    return f"eeszt.login.wait.{user_id}"


def login_pending_queue(user_id: str) -> str:
    """Holds at most one marker: a login of this doctor is in progress (TTL = login window)."""
    return f"eeszt.login.pending.{user_id}"


def login_marker_queues(user_id: str) -> tuple[str, str]:
    """The doctor's login marker queue, then its spare. The marker is a classic queue, which
    lives on one node: while that node is down, logins of this doctor use the spare (which
    RabbitMQ places on a live node). A doctor id has no dot, so no id names another's spare."""
    return login_pending_queue(user_id), login_pending_queue(user_id) + ".spare"


# --- outages: requests parked while a service's circuit breaker is open ----------------------
H_PARKED: Final = "eeszt-parked"  # the request was parked during an outage


def parked_queue(service: str) -> str:
    """Requests held while ``service`` is down (durable, no TTL but each request's deadline)."""
    return f"eeszt.parked.{service}"


# --- the topology, declared once as data ---------------------------------------------------------
#: a channel call: method name, positional and keyword arguments (``getattr(channel, m)(...)``)
Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Exchange:
    """A durable exchange (``kind``: fanout, topic or direct)."""

    name: str
    kind: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def call(self, queue_type: str) -> Call:
        kwargs: dict[str, Any] = {"durable": True}
        if self.arguments:
            kwargs["arguments"] = dict(self.arguments)
        return "exchange_declare", (self.name, self.kind), kwargs


@dataclass(frozen=True, slots=True)
class Queue:
    """A durable queue of the gateway's ``queue_type``: a work queue (dramatiq consumes it, so it
    carries dramatiq's arguments), one whose expired messages go to ``dead_letters_to``, or a
    plain one."""

    name: str
    work: bool = False
    dead_letters_to: str | None = None

    def arguments(self, queue_type: str) -> dict[str, Any]:
        if self.work:
            return work_queue_arguments(self.name, queue_type)
        if self.dead_letters_to is not None:
            return queue_arguments(queue_type, dead_letter_to(self.dead_letters_to))
        return queue_arguments(queue_type)

    def call(self, queue_type: str) -> Call:
        return "queue_declare", (self.name,), {"durable": True,
                                               "arguments": self.arguments(queue_type)}


@dataclass(frozen=True, slots=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str = ""

    def call(self, queue_type: str) -> Call:
        return "queue_bind", (self.queue, self.exchange), {"routing_key": self.routing_key}


Declaration = Exchange | Queue | Binding


#: the replies exchange, declared also by whoever only consumes replies
REPLIES_EXCHANGE_DECLARATION: Final = Exchange(REPLIES_EXCHANGE, "topic")


def _request_path() -> tuple[Declaration, ...]:
    out: list[Declaration] = [
        # the alternate exchange first: the requests exchange names it
        Exchange(UNROUTED_EXCHANGE, "fanout"),
        Exchange(REQUESTS_EXCHANGE, "topic", REQUESTS_EXCHANGE_ARGUMENTS),
        REPLIES_EXCHANGE_DECLARATION,
    ]
    for queue, patterns in BINDINGS.items():
        out.append(Queue(queue, work=True))
        out += [Binding(queue, REQUESTS_EXCHANGE, pattern) for pattern in patterns]
    # Unknown types go to the interactive queue, where a worker rejects them with a reply.
    out += [Binding(INTERACTIVE_QUEUE, UNROUTED_EXCHANGE), Queue(DEAD_LETTER_QUEUE)]
    return tuple(out)


#: What a producer declares after each connect: exchanges, work queues and their bindings, the
#: dead-letter queue. A request published before any worker ever ran still lands in a queue.
REQUEST_PATH: Final[tuple[Declaration, ...]] = _request_path()

#: What every worker process declares: the request path, the tokens exchange, the retry tiers
#: and the interactive logins' exchanges and queues.
WORKER_TOPOLOGY: Final[tuple[Declaration, ...]] = (
    *REQUEST_PATH,
    Exchange(TOKENS_EXCHANGE, "fanout"),
    *(Queue(retry_queue(queue, tier), dead_letters_to=queue)
      for queue in BINDINGS for tier in RETRY_TIERS_S),
    # challenges to workstations, answers from the bridges
    Exchange(CARD_EXCHANGE, "direct"),
    # topic, so that topic permissions can pin a bridge user to the key "answer"
    Exchange(LOGIN_EXCHANGE, "topic"),
    # dramatiq consumes it too, so it carries the same arguments as a work queue
    Queue(LOGIN_ANSWERS_QUEUE, work=True),
    Binding(LOGIN_ANSWERS_QUEUE, LOGIN_EXCHANGE, LOGIN_ANSWER_KEY),
    Queue(LOGIN_DELAY_QUEUE, dead_letters_to=LOGIN_ANSWERS_QUEUE),
)


def declaration_calls(declarations: Iterable[Declaration],
                      queue_type: str = DEFAULT_QUEUE_TYPE) -> list[Call]:
    """The channel calls that declare ``declarations`` with ``queue_type``, in order."""
    check_queue_type(queue_type)
    return [d.call(queue_type) for d in declarations]
