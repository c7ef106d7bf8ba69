"""Errors raised by the HIS-side client. Library exceptions (pika, pydantic) never escape it.

::

    ProducerError                 anything the producers package refuses or cannot do
    ├── BrokerUnavailable         no broker after a bounded number of connects (``attempts``),
    │                             or the broker stopped confirming (blocked, overloaded)
    ├── PublishFailed             the broker nacked a message, returned it as unroutable, closed
    │                             the channel over it, or did not confirm it in time
    │                             (``message_id``, ``reason``)
    └── InvalidRequest            a request failed local validation (``field``, ``reason``,
                                  ``lineno`` for JSONL input)

Catch :class:`ProducerError` to handle all of them. The retry decision reads the class, never the
message: ``BrokerUnavailable`` is worth retrying later (nothing was confirmed), ``PublishFailed``
needs a look at ``reason`` (resubmitting is safe: the gateway dedupes by idempotency key), and
``InvalidRequest`` never succeeds unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from schemas.replies import describe_validation_error

__all__ = ["BrokerUnavailable", "InvalidRequest", "ProducerError", "PublishFailed"]


class ProducerError(Exception):
    """Base class of every error the producers package raises."""


class BrokerUnavailable(ProducerError):
    """The broker could not be reached after ``attempts`` connects, or stopped confirming.

    ``unconfirmed`` lists the message ids that were handed over but never confirmed: the broker
    may or may not hold them, so publish them again once it is back (the gateway dedupes).
    """

    def __init__(self, reason: str, *, attempts: int, unconfirmed: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.unconfirmed: tuple[str, ...] = tuple(unconfirmed)


class PublishFailed(ProducerError):
    """The broker did not take the message ``message_id``; ``reason`` says why."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"message {message_id} not published: {reason}")
        self.message_id = message_id
        self.reason = reason


class InvalidRequest(ProducerError):
    """A request is not valid: ``field`` is the dotted path of the culprit ("" = the whole
    request, e.g. not JSON) and ``reason`` says why, without repeating the value (TAJ, BNO)."""

    def __init__(self, field: str, reason: str, *, lineno: int | None = None) -> None:
        where = f"line {lineno}: " if lineno is not None else ""
        super().__init__(f"{where}{field or '(request)'}: {reason}")
        self.field = field
        self.reason = reason
        self.lineno = lineno

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, *, lineno: int | None = None
    ) -> InvalidRequest:
        """Wrap pydantic's error, keeping its first problem (and how many more there are)."""
        field, reason = describe_validation_error(exc)
        return cls(field, reason, lineno=lineno)
