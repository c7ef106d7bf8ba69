"""A corpus of hostile broker messages: what a buggy or malicious HIS client, or a broken
tool, can put into a queue. Every reader of broker messages (the workers, ``eeszt-gw status``,
``dlq``, ``audit``) must survive each of them and say something useful about it.

Each entry is a body and AMQP properties as a plain AMQP client would publish them; header
values use every type an AMQP field table can carry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pika

from schemas.wire import H_CODE, H_FIRST_SEEN, H_MESSAGE_ID, H_REASON, H_TYPE
from tests import samples

TAJ = samples.TAJ
DEPTH = 5000
HUGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)

    def props(self) -> pika.BasicProperties:
        return pika.BasicProperties(delivery_mode=2, **self.properties)


def _deep(reply_to: str | None = None) -> bytes:
    request = json.loads(samples.prescription().to_json())
    if reply_to is None:
        request.pop("reply_to", None)
    else:
        request["reply_to"] = reply_to
    text = json.dumps(request)
    return (text[:-1] + ',"x":' + "[" * DEPTH + "]" * DEPTH + "}").encode()


def corpus(run: str, *, huge: bool = True) -> list[Hostile]:
    """The corpus; ``run`` (a few letters) goes into every message that has an id, so a test
    can tell its own messages apart. ``huge=False`` leaves out the 8 MiB one."""
    now = int(time.time())
    valid = samples.prescription()
    items = [
        Hostile("deep", _deep(), {"message_id": f"{run}-deep", "timestamp": now,
                                  "headers": {H_CODE: "GW-INTERNAL",
                                              H_REASON: "internal error (RecursionError)"}}),
        Hostile("deep-with-reply-to", _deep("his.hostile"), {"message_id": f"{run}-deep2"}),
        Hostile("invalid-utf8", b'{"reply_to": "his.x", "note": "\xff\xfe\xc3\x28"}',
                {"message_id": f"{run}-utf8", "headers": {H_REASON: b"\xff\xfe bytes"}}),
        Hostile("binary", bytes(range(256)) + b"\x1b[2J\x1b]0;title\x07" + bytes(range(256)),
                {"message_id": f"{run}-binary", "content_type": "application/octet-stream"}),
        Hostile("no-properties", b"{not json at all"),
        Hostile("headers-of-wrong-types", b"{}", {
            "message_id": f"{run}-types", "timestamp": 2 ** 62,
            "headers": {H_TYPE: 42, H_CODE: ["GW-FAILED", {"x": 1}], H_FIRST_SEEN: "yesterday",
                        H_MESSAGE_ID: {"nested": True}, H_REASON: Decimal("1.5"),
                        "eeszt-attempt": datetime(2026, 1, 1, tzinfo=timezone.utc),
                        "eeszt-ambiguous": None, "x-death": "not a list"}}),
        Hostile("markup-in-headers", b"[]", {
            "message_id": f"{run}-markup",
            "headers": {H_CODE: "[/bold][link=x]", H_REASON: "[bold red]boom[/]\x1b[31m",
                        H_TYPE: "erecept.submit"}}),
        Hostile("json-list", b"[1, 2, 3]", {"message_id": f"{run}-list"}),
        Hostile("json-number", b"42", {"message_id": f"{run}-number"}),
        Hostile("empty", b"", {"message_id": f"{run}-empty"}),
        Hostile("valid-with-taj", valid.to_json(), {
            "message_id": f"{run}-taj", "timestamp": now,
            "headers": {H_CODE: "GW-FAILED", H_TYPE: valid.message_type,
                        H_REASON: f"rejected: no such patient {TAJ}",
                        H_FIRST_SEEN: (now - 60) * 1000}}),
        Hostile("taj-in-the-code", b"{}", {"message_id": f"{run}-tajcode",
                                           "headers": {H_CODE: f"X-{TAJ}"}}),
    ]
    if huge:
        blob = json.dumps({"reply_to": "his.hostile", "taj": TAJ, "blob": "A" * HUGE_BYTES})
        items.append(Hostile("huge", blob.encode(), {"message_id": f"{run}-huge"}))
    return items


def publish(channel, queue: str, items: list[Hostile]) -> None:
    """Publish each item straight into ``queue`` (default exchange), confirmed."""
    channel.confirm_delivery()
    for item in items:
        channel.basic_publish("", queue, item.body, item.props(), mandatory=True)
