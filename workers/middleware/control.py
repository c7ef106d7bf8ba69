"""Answering ``eeszt-gw status``: what a worker process is doing right now.

What sits in a queue is visible over AMQP; what a worker thread is processing is not. So each
worker process keeps an :class:`InFlight` registry (filled by :class:`InFlightMiddleware`, a
dramatiq middleware) and runs a :class:`ControlResponder`: a daemon thread with its own pika
connection, consuming an exclusive queue bound to the fanout exchange ``eeszt.control``. The
status command publishes one request there with ``reply_to`` set; every live process answers on
that queue with its pid, host, queues, the requests in flight and the doctors' logins it
started, copying the request's ``correlation_id``.

The request is ``{"op": "status"}``; anything else is ignored. An answer is a JSON object::

    {"op": "status", "pid": 4711, "host": "gw-1", "at": 1764144000.0, <info...>,
     "in_flight": [{"message_id", "service", "message_type", "started_at"}],
     "login_waits": ["O10003", ...],          # only when a login_waits callable is given
     "breakers": [{"service", "state", "since", "failures", "openings", "last_probe_at",
                   "parked"}]}                 # only when a breakers callable is given

``state`` is ``closed``, ``open`` or ``half-open`` (a probe in flight); ``since`` (the last
change) and ``last_probe_at`` are epoch seconds; ``parked`` counts the requests this process
parked for the service since it started (from its metrics). A service without an entry has
seen no request in that process: its circuit is closed.

``started_at`` is epoch seconds. The responder reconnects on its own when the broker goes
away; nothing here raises into the worker.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

import dramatiq
import pika
import pika.exceptions

from schemas.card import LOGIN_ANSWERS_QUEUE
from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection
from schemas.soap import OPERATION_OF, SERVICES

log = logging.getLogger("eeszt_gw.control")

CONTROL_EXCHANGE = "eeszt.control"
STATUS_OP = "status"


class InFlight:
    """Thread-safe registry of the requests being processed in this process.

    ``start`` is called by a worker thread before the actor runs, ``finish`` after it (whatever
    the outcome); ``snapshot`` by the control thread. ``key`` tells two deliveries of the same
    request apart (dramatiq's per-delivery message id); it defaults to ``message_id``.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}

    def start(self, message_id: str | None, service: str | None, message_type: str | None,
              *, key: str | None = None) -> str:
        """Record a request as in flight; returns the key to ``finish`` it with."""
        k = key or message_id or f"anon-{uuid.uuid4()}"
        entry = {"message_id": message_id, "service": service, "message_type": message_type,
                 "started_at": self._clock()}
        with self._lock:
            self._items[k] = entry
        return k

    def start_message(self, key: str, args: Any, actor_name: str | None) -> None:
        """Record an actor call as in flight without reading it now: its body is parsed only
        when a snapshot asks (:func:`describe_message`), not a thousand times a second."""
        entry = {"_args": args, "_actor": actor_name, "started_at": self._clock()}
        with self._lock:
            self._items[key] = entry

    def finish(self, key: str | None) -> None:
        """Forget a request (unknown keys are ignored: finishing twice is harmless)."""
        if key is None:
            return
        with self._lock:
            self._items.pop(key, None)

    def snapshot(self) -> list[dict[str, Any]]:
        """Copies of the entries, oldest first."""
        with self._lock:
            items = [dict(v) for v in self._items.values()]
        for item in items:
            if "_args" in item:
                args, actor = item.pop("_args"), item.pop("_actor")
                item["message_id"], item["service"], item["message_type"] = \
                    describe_message(args, actor)
        return sorted(items, key=lambda e: e["started_at"])

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def describe_message(args: Any, actor_name: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(message_id, service, message_type) of an actor call ``(body_b64, meta)``; never raises.

    The body is parsed as plain JSON (not validated): a garbage body still gets the AMQP
    message id and the type from the delivery's metadata.
    """
    meta: dict[str, Any] = {}
    body: Any = None
    try:
        body_b64, meta_raw = args[0], args[1]
        if isinstance(meta_raw, dict):
            meta = meta_raw
        # The body's own ids are what the HIS knows; a huge body (poison) is not parsed twice.
        if len(body_b64) < 96_000:
            body = json.loads(base64.b64decode(body_b64, validate=False))
    except Exception:  # garbage of every kind: not base64, not UTF-8, not JSON, wrong shape
        body = None
    mid = mtype = None
    if isinstance(body, dict):
        if isinstance(body.get("message_id"), str):
            mid = body["message_id"][:64]
        payload = body.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("type"), str):
            mtype = payload["type"][:64]
    mid = mid or (str(meta["message_id"]) if meta.get("message_id") else None)
    mtype = mtype or (str(meta["type"]) if meta.get("type") else None)
    if mtype in OPERATION_OF:
        service: str | None = OPERATION_OF[mtype][0].name
    elif actor_name in SERVICES:
        service = actor_name
    else:
        service = None
    return mid, service, mtype


class InFlightMiddleware(dramatiq.Middleware):
    """Keeps an :class:`InFlight` registry up to date from dramatiq's message hooks.

    Login events (card answers, window expiries) are not requests and are not recorded.
    """

    def __init__(self, registry: InFlight) -> None:
        self.registry = registry

    @staticmethod
    def _is_request(message: Any) -> bool:
        return getattr(message, "queue_name", None) != LOGIN_ANSWERS_QUEUE

    def before_process_message(self, broker: Any, message: Any) -> None:
        if not self._is_request(message):
            return
        try:
            self.registry.start_message(self._key(message), getattr(message, "args", ()),
                                        getattr(message, "actor_name", None))
        except Exception:  # bookkeeping must never stop a request
            log.exception("could not record a message as in flight")

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self._finish(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._finish(message)

    @staticmethod
    def _key(message: Any) -> str:
        # dramatiq's id is per delivery, so a request delivered twice at once is two entries
        return str(getattr(message, "message_id", None) or f"obj-{id(message)}")

    def _finish(self, message: Any) -> None:
        if self._is_request(message):
            self.registry.finish(self._key(message))


class ControlResponder:
    """A daemon thread answering status requests on ``eeszt.control``.

    ``in_flight`` returns the requests in flight (``InFlight.snapshot``); ``info`` is merged into
    every answer (for example ``{"queues": [...], "threads": 16}``); ``login_waits`` returns the
    doctors whose logins this process started; ``breakers`` the circuit breakers' states
    (``workers.breaker.Breakers.snapshot``). Call :meth:`start` once and :meth:`stop` at
    shutdown. Broker failures are logged and retried with a backoff; nothing is raised.
    """

    def __init__(self, url: str, *, in_flight: Callable[[], list[dict[str, Any]]],
                 info: dict[str, Any] | None = None,
                 login_waits: Callable[[], list[str]] | None = None,
                 breakers: Callable[[], list[dict[str, Any]]] | None = None,
                 exchange: str = CONTROL_EXCHANGE, tls: BrokerTLS | None = None) -> None:
        self.params = broker_addresses(url, tls, connection_attempts=1)  # tried in turn
        self.in_flight = in_flight
        self.info = dict(info or {})
        self.login_waits = login_waits
        self.breakers = breakers
        self.exchange = exchange
        self.ready = threading.Event()  # set while consuming (tests wait on it)
        self.answered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ControlResponder":
        self._thread = threading.Thread(target=self._run, name="control-responder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to one decoded request, or None when it is not a status request."""
        if not isinstance(request, dict) or request.get("op") != STATUS_OP:
            return None
        out: dict[str, Any] = {"op": STATUS_OP, "pid": os.getpid(), "host": socket.gethostname(),
                               "at": time.time(), **self.info}
        try:
            out["in_flight"] = list(self.in_flight())
        except Exception as exc:  # report the problem instead of staying silent
            log.exception("in_flight callable failed")
            out["in_flight"], out["error"] = [], f"in_flight: {type(exc).__name__}: {exc}"
        if self.login_waits is not None:
            try:
                out["login_waits"] = sorted({str(u) for u in self.login_waits()})
            except Exception as exc:
                log.exception("login_waits callable failed")
                out["error"] = f"login_waits: {type(exc).__name__}: {exc}"
        if self.breakers is not None:
            try:
                out["breakers"] = [dict(b) for b in self.breakers()]
            except Exception as exc:
                log.exception("breakers callable failed")
                out["error"] = f"breakers: {type(exc).__name__}: {exc}"
        return out

    def _on_request(self, ch, method, props, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            return
        reply = self.answer(request)
        if reply is None or not props.reply_to:
            return
        ch.basic_publish("", props.reply_to, json.dumps(reply, default=str).encode(),
                         pika.BasicProperties(content_type="application/json",
                                              correlation_id=props.correlation_id,
                                              delivery_mode=1))
        self.answered += 1

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            conn = None
            try:
                conn = open_connection(self.params)
                ch = conn.channel()
                ch.exchange_declare(self.exchange, "fanout", durable=True)
                queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
                ch.queue_bind(queue, self.exchange)
                ch.basic_consume(queue, self._on_request, auto_ack=True)
                self.ready.set()
                failures = 0
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.5)
            except Exception as exc:  # pika errors, OSError, a bug: this thread must not die
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("control responder lost the broker (%s); reconnecting in %.1fs",
                            exc, delay)
                self.ready.clear()
                self._stop.wait(delay)
            finally:
                self.ready.clear()
                if conn is not None and conn.is_open:
                    try:
                        conn.close()
                    except Exception:  # closing a broken connection: nothing more to do
                        pass
