"""Declaring the broker topology the workers need (idempotent; every process does it).

The names and arguments come from :mod:`schemas.wire`, so a producer, a worker, ``deploy/``
and a HIS's own client all agree; RabbitMQ refuses a re-declaration with other arguments.
"""

from __future__ import annotations

from schemas.card import CARD_EXCHANGE, LOGIN_ANSWERS_QUEUE
from schemas.wire import (
    BINDINGS,
    DEAD_LETTER_QUEUE,
    REPLIES_EXCHANGE,
    REQUESTS_EXCHANGE,
    REQUESTS_EXCHANGE_ARGUMENTS,
    DEFAULT_QUEUE_TYPE,
    RETRY_TIERS_S,
    TOKENS_EXCHANGE,
    UNROUTED_EXCHANGE,
    INTERACTIVE_QUEUE,
    LOGIN_ANSWER_KEY,
    LOGIN_DELAY_QUEUE,
    LOGIN_EXCHANGE,
    dead_letter_to,
    queue_arguments,
    retry_queue,
    work_queue_arguments,
)


def declare(channel, queue_type: str = DEFAULT_QUEUE_TYPE) -> None:
    """Declare exchanges, work queues, bindings, retry tiers and the dead-letter queue.

    Every queue gets ``queue_type`` (``classic`` or ``quorum``, ``schemas.wire.queue_arguments``).
    """
    channel.exchange_declare(UNROUTED_EXCHANGE, "fanout", durable=True)
    channel.exchange_declare(REQUESTS_EXCHANGE, "topic", durable=True,
                             arguments=dict(REQUESTS_EXCHANGE_ARGUMENTS))
    channel.exchange_declare(REPLIES_EXCHANGE, "topic", durable=True)
    channel.exchange_declare(TOKENS_EXCHANGE, "fanout", durable=True)
    for queue, patterns in BINDINGS.items():
        channel.queue_declare(queue, durable=True,
                              arguments=work_queue_arguments(queue, queue_type))
        for pattern in patterns:
            channel.queue_bind(queue, REQUESTS_EXCHANGE, routing_key=pattern)
        for tier in RETRY_TIERS_S:
            channel.queue_declare(retry_queue(queue, tier), durable=True,
                                  arguments=queue_arguments(queue_type, dead_letter_to(queue)))
    # Unknown message types still reach a worker, which answers with a rejection.
    channel.queue_bind(INTERACTIVE_QUEUE, UNROUTED_EXCHANGE)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=queue_arguments(queue_type))
    # Interactive logins: challenges to workstations, answers from the bridges.
    channel.exchange_declare(CARD_EXCHANGE, "direct", durable=True)
    # topic, so that topic permissions can pin a bridge user to the key "answer"
    channel.exchange_declare(LOGIN_EXCHANGE, "topic", durable=True)
    # dramatiq consumes it too, so it must carry the same arguments as a work queue
    channel.queue_declare(LOGIN_ANSWERS_QUEUE, durable=True,
                          arguments=work_queue_arguments(LOGIN_ANSWERS_QUEUE, queue_type))
    channel.queue_bind(LOGIN_ANSWERS_QUEUE, LOGIN_EXCHANGE, routing_key=LOGIN_ANSWER_KEY)
    channel.queue_declare(LOGIN_DELAY_QUEUE, durable=True, arguments=queue_arguments(
        queue_type, dead_letter_to(LOGIN_ANSWERS_QUEUE)))
