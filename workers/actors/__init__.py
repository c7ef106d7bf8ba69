"""One actor per EESZT service, from the one table of services (``schemas.services``); all of
them hand the request to the same pipeline.

Interactive services (eRecept, eBeutaló, eProfil) consume ``eeszt.interactive`` at priority 0;
batch services (events, EHR) consume ``eeszt.batch`` at priority 10. Separate queues keep an
overnight batch from delaying a prescription at the broker, and the priority lets a worker that
consumes both run an interactive request before batch messages it has already prefetched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import dramatiq

from schemas.card import LOGIN_ANSWERS_QUEUE
from schemas.services import SERVICE_TABLE, ServiceRow
from schemas.wire import INTERACTIVE_QUEUE, QUEUE_CLASSES


class ActorSpec(NamedTuple):
    """One service's actor: its name (the service's), the queue it consumes, its priority
    (lower runs first: interactive work overtakes prefetched batch work)."""

    name: str
    queue: str
    priority: int


def actor_specs(rows: Iterable[ServiceRow]) -> tuple[ActorSpec, ...]:
    """The actor of each service of ``rows`` (rows of the table of services)."""
    return tuple(ActorSpec(row.name, QUEUE_CLASSES[row.queue_class], row.priority) for row in rows)


SERVICE_ACTORS: tuple[ActorSpec, ...] = actor_specs(SERVICE_TABLE)
UNROUTABLE = "unroutable"
LOGIN_EVENTS = "loginEvents"

Handler = Callable[[str, dict[str, Any]], None]


def register_actors(broker: dramatiq.Broker, handler: Handler,
                    login_handler: Handler | None = None, *,
                    services: Iterable[ActorSpec] = SERVICE_ACTORS) -> dict[str, dramatiq.Actor]:
    """Declare every actor on ``broker`` (no global broker: nothing happens at import time):
    one per service of ``services``, the unroutable one, and the login events' one.

    All actors are declared even in a process that consumes one queue class, so that a message
    published to the "wrong" queue still finds its actor instead of bouncing forever.
    """
    actors: dict[str, dramatiq.Actor] = {}
    specs: list[tuple[str, str, int]] = list(services)
    # Unknown message types reach the interactive queue through the alternate exchange.
    specs.append((UNROUTABLE, INTERACTIVE_QUEUE, 0))
    for name, queue, priority in specs:
        def fn(body_b64: str, meta: dict[str, Any], _h: Handler = handler) -> None:
            _h(body_b64, meta)

        fn.__name__ = name
        actors[name] = dramatiq.actor(fn, actor_name=name, queue_name=queue, priority=priority,
                                      broker=broker)
    if login_handler is not None:
        # Card answers and login events: priority 0, they unblock waiting prescriptions.
        def login_fn(body_b64: str, meta: dict[str, Any], _h: Handler = login_handler) -> None:
            _h(body_b64, meta)

        login_fn.__name__ = LOGIN_EVENTS
        actors[LOGIN_EVENTS] = dramatiq.actor(login_fn, actor_name=LOGIN_EVENTS,
                                              queue_name=LOGIN_ANSWERS_QUEUE, priority=0,
                                              broker=broker)
    return actors
