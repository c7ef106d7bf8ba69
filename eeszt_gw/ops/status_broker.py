"""The broker side of ``eeszt-gw status``: read-only looks over plain AMQP 0-9-1.

Ready counts come from a passive ``queue_declare`` (a missing queue closes the channel with 404:
it is reopened and the queue reported as absent). A browse takes up to a cap of ready messages
with ``basic_get`` and no ack, then puts them all back with one ``basic_nack(multiple,
requeue)``. The workers are asked on the fanout exchange ``eeszt.control``
(``workers.middleware.control``). ``rabbitmqctl`` is an optional extra, used only for a broker on
this host.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from datetime import datetime
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection, safe_url, split_urls
from schemas.soap import OPERATION_OF
from schemas.strict_json import read_object
from schemas.wire import H_CODE, H_FIRST_SEEN, H_TYPE
from workers.middleware.control import CONTROL_EXCHANGE, STATUS_OP

UNKNOWN = "unknown"


class BrokerUnreachable(Exception):
    """The broker refused or did not answer the connection (exit code 2)."""


def describe_error(exc: BaseException) -> str:
    """One line for a pika or socket error (pika often keeps the cause in ``args``)."""
    detail = str(exc) or ", ".join(str(a) or repr(a) for a in exc.args) or type(exc).__name__
    return " ".join(detail.split())


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


# --- one message, seen while browsing ---------------------------------------------------------
def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def message_facts(props: Any, body: bytes, now: float) -> tuple[str, float | None, str | None]:
    """(service, age in seconds, eeszt-code) of a browsed message; never raises, whatever the
    body (not UTF-8, too deep, huge) or the headers (any type) hold.

    The age counts from ``eeszt-first-seen`` (epoch ms), else the AMQP timestamp, else the
    envelope's ``created_at``. The service comes from ``eeszt-type``, else the body's type.
    """
    headers = getattr(props, "headers", None) or {}
    if not isinstance(headers, dict):
        headers = {}
    mtype, age = _text(headers.get(H_TYPE)), None
    first_seen = headers.get(H_FIRST_SEEN)
    if isinstance(first_seen, (int, float)) and not isinstance(first_seen, bool):
        age = now - first_seen / 1000
    elif isinstance(getattr(props, "timestamp", None), int):
        age = now - props.timestamp
    if age is not None and not -1e12 < age < 1e12:  # no clock gives such a time
        age = None
    if mtype is None or age is None:
        data, _why = read_object(body)
        if isinstance(data, dict):
            payload = data.get("payload")
            if mtype is None and isinstance(payload, dict):
                mtype = _text(payload.get("type"))
            if age is None and isinstance(data.get("created_at"), str):
                try:
                    created = datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
                    age = now - created.timestamp()
                except (ValueError, OverflowError, OSError):
                    pass
    service = OPERATION_OF[mtype][0].name if mtype in OPERATION_OF else UNKNOWN
    return service, (max(0.0, age) if age is not None else None), _text(headers.get(H_CODE))


# --- the broker --------------------------------------------------------------------------------
class BrokerView:
    """Read-only looks at the broker over one connection. A context manager."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, tls: BrokerTLS | None = None) -> None:
        # every broker address of url (comma-separated), tried in turn
        params = broker_addresses(url, tls, connection_attempts=1, socket_timeout=timeout_s,
                                  stack_timeout=timeout_s * 2, blocked_connection_timeout=timeout_s)
        try:
            self.conn = open_connection(params)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnreachable(describe_error(exc)) from exc
        self.ch = self.conn.channel()

    def __enter__(self) -> "BrokerView":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.conn.is_open:
            self.conn.close()

    def _reopen(self) -> None:
        if self.ch.is_closed:
            self.ch = self.conn.channel()

    def depth(self, queue: str) -> int | None:
        """Ready messages in ``queue``, or None when it does not exist."""
        try:
            return self.ch.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._reopen()
            if exc.reply_code == 404:
                return None
            raise

    def browse(self, queue: str, cap: int) -> list[tuple[Any, bytes]]:
        """Up to ``cap`` ready messages of ``queue``, all put back where they were."""
        seen: list[tuple[Any, bytes]] = []
        last = None
        try:
            while len(seen) < cap:
                method, props, body = self.ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                seen.append((props, body))
                last = method.delivery_tag
        except pika.exceptions.ChannelClosedByBroker:
            self._reopen()  # the queue vanished meanwhile: its unacked messages went back
            return seen
        if last is not None:
            self.ch.basic_nack(last, multiple=True, requeue=True)
        return seen

    def ask_workers(self, wait_s: float) -> list[dict[str, Any]]:
        """Every worker process's status answer that arrives within ``wait_s``."""
        ch = self.conn.channel()
        ch.exchange_declare(CONTROL_EXCHANGE, "fanout", durable=True)
        reply_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        corr = str(uuid.uuid4())
        answers: dict[tuple[Any, Any], dict[str, Any]] = {}

        def on_answer(_ch, _method, props, body: bytes) -> None:
            if props.correlation_id != corr:
                return
            try:
                answer = json.loads(body)
            except ValueError:
                return
            if isinstance(answer, dict):
                answers[(answer.get("host"), answer.get("pid"))] = answer

        ch.basic_consume(reply_q, on_answer, auto_ack=True)
        ch.basic_publish(CONTROL_EXCHANGE, "", json.dumps({"op": STATUS_OP, "id": corr}).encode(),
                         pika.BasicProperties(reply_to=reply_q, correlation_id=corr,
                                              content_type="application/json", delivery_mode=1,
                                              expiration=str(max(1, int(wait_s * 1000)))))
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            self.conn.process_data_events(time_limit=min(left, 0.2))
        ch.close()
        return sorted(answers.values(), key=lambda a: (str(a.get("host")), str(a.get("pid"))))


def _is_local(url: str) -> bool:
    host = (urlsplit(url).hostname or "localhost").lower()
    return host in {"localhost", "127.0.0.1", "::1", socket.gethostname().lower(),
                    socket.getfqdn().lower()}


def rabbitmqctl_queue_names(url: str, run: Callable[..., Any] = subprocess.run) -> list[str] | None:
    """Queue names of the URL's vhost from ``rabbitmqctl``, or None when it cannot say.

    Only for a broker on this host: ``rabbitmqctl`` talks to the local node, which is not the
    broker of a remote URL. Of several URLs (comma-separated), the first on this host counts.
    """
    url = next((u for u in split_urls(url) if _is_local(u)), "")
    if not url or shutil.which("rabbitmqctl") is None:
        return None
    try:
        done = run(["rabbitmqctl", "-q", "list_queues", "-p", vhost_of(url), "name",
                    "--no-table-headers"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


