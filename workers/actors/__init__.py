"""One actor per EESZT service; all of them hand the request to the same pipeline.

Interactive services (eRecept, eBeutaló, eProfil) consume ``eeszt.interactive`` at priority 0;
batch services (events, EHR) consume ``eeszt.batch`` at priority 10. Separate queues keep an
overnight batch from delaying a prescription at the broker, and the priority lets a worker that
consumes both run an interactive request before batch messages it has already prefetched.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import dramatiq

from schemas.card import LOGIN_ANSWERS_QUEUE
from schemas.wire import INTERACTIVE_QUEUE

from . import ebeutalo, eht, eprofil, erecept, esemenykatalogus

SERVICES: tuple[ModuleType, ...] = (erecept, ebeutalo, eprofil, esemenykatalogus, eht)
UNROUTABLE = "unroutable"
LOGIN_EVENTS = "loginEvents"

Handler = Callable[[str, dict[str, Any]], None]


def register_actors(broker: dramatiq.Broker, handler: Handler,
                    login_handler: Handler | None = None) -> dict[str, dramatiq.Actor]:
    """Declare every actor on ``broker`` (no global broker: nothing happens at import time).

    All actors are declared even in a process that consumes one queue class, so that a message
    published to the "wrong" queue still finds its actor instead of bouncing forever.
    """
    actors: dict[str, dramatiq.Actor] = {}
    specs = [(m.ACTOR, m.QUEUE, m.PRIORITY) for m in SERVICES]
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
