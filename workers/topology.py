"""Declaring the broker topology the workers need (idempotent; every process does it).

The topology is data in :mod:`schemas.wire` (``WORKER_TOPOLOGY``), so a producer, a worker,
``deploy/`` and a HIS's own client all agree; RabbitMQ refuses a re-declaration with other
arguments.
"""

from __future__ import annotations

from schemas.wire import DEFAULT_QUEUE_TYPE, WORKER_TOPOLOGY, declaration_calls


def declare(channel, queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
    """Declare exchanges, work queues, bindings, retry tiers, the dead-letter queue and the
    interactive logins' exchanges and queues.

    Every queue gets ``queue_type`` (``classic`` or ``quorum``, ``schemas.wire.queue_arguments``).
    """
    for method, args, kwargs in declaration_calls(WORKER_TOPOLOGY, queue_type):
        getattr(channel, method)(*args, **kwargs)
