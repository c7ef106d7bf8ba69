"""How a token reaches the other worker processes, and why that is safe.

A process that logs an identity in publishes the token on the fanout exchange
``eeszt.tokens``. Every worker process consumes it through its own exclusive, auto-deleted,
non-durable queue and puts it in its cache. So one login serves every process: a MobilToken
code is used once, and (later) an eSZIG card login prompts once.

Why that is safe:

- **Encrypted.** The body is AES-256-GCM with a key that only worker processes hold
  (``EESZT_TOKEN_KEY``; the supervisor makes a random one for its own children). The broker, its
  management UI and anyone who can bind a queue to the exchange see ciphertext only; GCM also
  rejects a forged or altered token.
- **Never on disk.** Messages are transient (``delivery_mode=1``) with a TTL equal to the token's
  remaining lifetime, and the queues are non-durable and exclusive; nothing is logged.
- **Cross-process single flight.** Before logging in, a process takes a lock: an exclusive queue
  ``eeszt.lock.token.<identity>``. RabbitMQ lets one connection hold it; if the holder dies, the
  broker drops the queue with the connection, so a crash cannot leave the lock stuck.

:class:`LocalTokenShare` is the single-process stand-in (unit tests, the embedded demo).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Iterator

import pika
import pika.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from eeszt_gw.amqp import BrokerTLS, broker_addresses, open_connection
from schemas.wire import TOKENS_EXCHANGE

from .token_type import Token

log = logging.getLogger("eeszt_gw.token_share")
_AAD = b"eeszt-gateway token v1"
Subscriber = Callable[[str, Token], None]


class LocalTokenShare:
    """One process only: nothing to share, the in-process lock is enough."""

    def subscribe(self, callback: Subscriber) -> None:
        pass

    def lookup(self, identity: str) -> Token | None:
        return None

    @contextlib.contextmanager
    def lock(self, identity: str, *, wait_s: float) -> Iterator[bool]:
        yield True

    def wait_for(self, identity: str, *, timeout_s: float, clock) -> Token | None:
        return None

    def publish(self, identity: str, token: Token) -> None:
        pass

    def forget(self, identity: str) -> None:
        pass

    def close(self) -> None:
        pass


def new_key() -> str:
    """A fresh base64 key for ``EESZT_TOKEN_KEY``."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def seal(key: bytes, token: Token) -> bytes:
    payload = json.dumps({
        "identity": token.identity, "created": token.created.isoformat(),
        "expires": token.expires.isoformat(), "refresh_at": token.refresh_at.isoformat(),
        "assertion": etree.tostring(token.assertion).decode(),
    }).encode()
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, payload, _AAD)


def unseal(key: bytes, data: bytes) -> Token:
    """Raises InvalidTag for anything not sealed with ``key``."""
    payload = json.loads(AESGCM(key).decrypt(data[:12], data[12:], _AAD))
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return Token(identity=payload["identity"],
                 assertion=etree.fromstring(payload["assertion"].encode(), parser),
                 created=datetime.fromisoformat(payload["created"]),
                 expires=datetime.fromisoformat(payload["expires"]),
                 refresh_at=datetime.fromisoformat(payload["refresh_at"]))


class RabbitTokenShare:
    """Token sharing over RabbitMQ; a background thread owns the consuming connection."""

    def __init__(self, *, url: str, key_b64: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 tls: BrokerTLS | None = None) -> None:
        self.params = broker_addresses(url, tls)  # tried in turn on each connect
        self.key = base64.b64decode(key_b64)
        if len(self.key) != 32:
            raise ValueError("token_key must be 32 bytes, base64-encoded")
        self.clock = clock
        self._tokens: dict[str, Token] = {}
        self._subscribers: list[Subscriber] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._conn: pika.BlockingConnection | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-share", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    # --- consuming ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = open_connection(self.params)
                ch = conn.channel()
                ch.exchange_declare(TOKENS_EXCHANGE, "fanout", durable=True)
                q = ch.queue_declare("", exclusive=True, auto_delete=True, durable=False)
                ch.queue_bind(q.method.queue, TOKENS_EXCHANGE)
                ch.basic_consume(q.method.queue, self._on_message, auto_ack=True)
                self._conn, self._channel = conn, ch
                self._ready.set()
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.5)
                conn.close()
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._conn = None
                self._ready.set()  # do not block start-up; the share reconnects
                log.warning("token share lost the broker (%s); reconnecting", type(exc).__name__)
                self._stop.wait(1.0)

    def _on_message(self, ch, method, props, body: bytes) -> None:
        try:
            token = unseal(self.key, body)
        except (InvalidTag, ValueError, KeyError, etree.XMLSyntaxError):
            log.warning("ignored a token message that does not decrypt with our key")
            return
        if not token.usable(self.clock()):
            return
        with self._cond:
            current = self._tokens.get(token.identity)
            if current is None or token.expires >= current.expires:
                self._tokens[token.identity] = token
            self._cond.notify_all()
        for cb in list(self._subscribers):
            cb(token.identity, token)

    # --- the share API --------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def lookup(self, identity: str) -> Token | None:
        token = self._tokens.get(identity)
        return token if token is not None and token.usable(self.clock()) else None

    def wait_for(self, identity: str, *, timeout_s: float, clock) -> Token | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                token = self._tokens.get(identity)
                if token is not None and token.fresh(clock()):
                    return token
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def publish(self, identity: str, token: Token) -> None:
        conn = self._conn
        if conn is None:
            return  # the others will log in themselves; correctness does not depend on sharing
        ttl_ms = int((token.expires - self.clock()).total_seconds() * 1000)
        if ttl_ms <= 0:
            return
        body = seal(self.key, token)
        props = pika.BasicProperties(delivery_mode=1, expiration=str(ttl_ms),
                                     content_type="application/octet-stream")
        try:
            conn.add_callback_threadsafe(
                lambda: self._channel.basic_publish(TOKENS_EXCHANGE, "", body, props))
        except (pika.exceptions.AMQPError, AttributeError) as exc:
            log.warning("could not share a token (%s)", type(exc).__name__)

    def forget(self, identity: str) -> None:
        with self._cond:
            self._tokens.pop(identity, None)

    @contextlib.contextmanager
    def lock(self, identity: str, *, wait_s: float) -> Iterator[bool]:
        """Yield True when this process holds the login lock of ``identity``, else False."""
        conn = None
        try:
            conn = open_connection(self.params)
            ch = conn.channel()
            try:
                ch.queue_declare(f"eeszt.lock.token.{identity}", exclusive=True, auto_delete=True)
                acquired = True
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 405:  # RESOURCE_LOCKED: someone else holds it
                    raise
                acquired = False
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("login lock unavailable (%s); logging in without it", type(exc).__name__)
            acquired = True
        try:
            yield acquired
        finally:
            if conn is not None and conn.is_open:
                try:
                    conn.close()  # releases the exclusive queue, hence the lock
                except Exception:  # the broker may already have gone
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
