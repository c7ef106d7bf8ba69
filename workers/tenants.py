"""Tenants: a HIS may have its replies sent only to its own routing keys.

The gateway publishes every reply to the request's ``reply_to`` on ``eeszt.replies``. Without a
check, HIS A could write ``reply_to: his.b`` and the gateway would deliver A's replies (and its
status updates) into HIS B's queue: a confused deputy. The check binds ``reply_to`` to the
publisher, and the publisher is the AMQP ``user_id`` property, which RabbitMQ validates: a
publish whose ``user_id`` differs from the connection's user is refused (406
PRECONDITION_FAILED), so a worker can trust it.

The convention is the one of ``deploy/rabbitmq/add-his-user NAME``: broker user ``his-NAME``,
reply key ``his.NAME``, reply queue ``his.NAME.replies``. A request published by ``his-NAME``
may name ``reply_to`` ``his.NAME`` or ``his.NAME.<anything>``, or leave it out.

Modes (``eeszt-gw worker --tenants``, ``EESZT_TENANTS``):

- ``off``: no check.
- ``his-users`` (default): requests with a ``his-*`` ``user_id`` are bound to their keys;
  requests without ``user_id``, or from another user (an operator, the gateway itself), pass.
  A HIS user that leaves ``user_id`` out is therefore not checked: this mode catches mistakes
  and clients that identify themselves, it does not stop a HIS that hides.
- ``strict``: as ``his-users``, and a request without ``user_id`` is refused, so no HIS can
  hide. Users that are not ``his-*`` (the gateway's own user, which stamps the copies it
  republishes to retry, park and login-wait queues, and operators replaying dead letters)
  are trusted. Every HIS client must then set ``user_id`` (the project's producers do).

The check costs a few string operations on fields the pipeline already has; it parses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MODES: Final = ("off", "his-users", "strict")
HIS_USER_PREFIX: Final = "his-"
HIS_KEY_PREFIX: Final = "his."


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not be answered where it asks; ``own_key`` is where its sender (a
    HIS user) hears about it, or None when the sender is unknown."""

    reason: str
    own_key: str | None = None


def his_reply_key(user_id: str) -> str | None:
    """``his.NAME`` for broker user ``his-NAME``; None for any other user."""
    if not user_id.startswith(HIS_USER_PREFIX):
        return None
    return HIS_KEY_PREFIX + user_id[len(HIS_USER_PREFIX):]


def refusal(mode: str, user_id: str | None, reply_to: str | None) -> Refusal | None:
    """None when a request from ``user_id`` may be answered at ``reply_to``, else why not."""
    if mode == "off":
        return None
    if not user_id:
        if mode == "strict":
            return Refusal("the request carries no user_id (the publisher's broker user name), "
                           "and this gateway runs with --tenants strict: every HIS must set it")
        return None
    if not user_id.startswith(HIS_USER_PREFIX):
        return None  # the gateway's own user or an operator: trusted
    name = user_id[len(HIS_USER_PREFIX):]
    key = HIS_KEY_PREFIX + name
    if not name or "." in name:
        # his-a.b would own his.a.b.*, which is inside his-a's his.a.*: never a HIS name
        # (add-his-user allows lower case letters, digits, - and _).
        return Refusal(f"broker user {user_id} is not a valid HIS user name (his-NAME, NAME "
                       "without dots), so no reply key belongs to it")
    if reply_to is None or reply_to == key or (reply_to.startswith(key)
                                              and reply_to[len(key):len(key) + 1] == "."):
        return None
    return Refusal(f"reply_to {reply_to} is not HIS {name}'s: it must be {key} or {key}.*",
                   own_key=key)
