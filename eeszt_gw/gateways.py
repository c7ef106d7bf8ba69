"""A whole gateway (workers + a HIS-side publisher and reply source) inside one process.

:class:`EmbeddedGateway` runs on dramatiq's in-memory StubBroker (the demo's default and the
unit tests'); :class:`RabbitGateway` runs the same workers on a real RabbitMQ with the real
producers. Both have the same small interface, so the broker contract tests run the same cases
against each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import dramatiq

from schemas.envelope import RequestEnvelope
from schemas.wire import INTERACTIVE_QUEUE, queue_for_type
from workers.broker import rabbit_broker, stub_broker, wrap_delivery
from workers.outbox import MemoryOutbox, RabbitOutbox
from workers.runtime import build_runtime
from workers.settings import WorkerSettings


class EmbeddedGateway:
    """Workers on dramatiq's in-memory StubBroker; replies through an in-memory outbox."""

    description = "the embedded in-memory broker"

    def __init__(self, settings: WorkerSettings, *, reply_key: str) -> None:
        from producers.memory import MemoryPublisher, MemoryReplies

        self.broker = stub_broker()
        self.replies = MemoryReplies(reply_key)
        outbox = MemoryOutbox(
            on_reply=lambda rk, reply: self.replies.deliver(rk, reply.model_dump_json().encode()),
            on_retry=lambda queue, body, headers, delay_s, mid: self.broker.enqueue(
                wrap_delivery(queue=queue, body=body, headers=headers, message_id=mid),
                delay=int(delay_s * 1000)))
        self.outbox = outbox
        self.runtime = build_runtime(settings, broker=self.broker, outbox=outbox)
        self.publisher = MemoryPublisher(sink=self._deliver)
        self.worker = dramatiq.Worker(self.broker, worker_threads=settings.threads, worker_timeout=100)
        self.worker.start()

    def _deliver(self, routing_key: str, body: bytes, headers: dict[str, Any],
                 message_id: str | None) -> None:
        queue = queue_for_type(routing_key) or INTERACTIVE_QUEUE
        self.broker.enqueue(wrap_delivery(queue=queue, body=body, routing_key=routing_key,
                                          headers=headers, message_id=message_id))

    def publish(self, request: RequestEnvelope) -> None:
        self.publisher.submit(request)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        self._deliver(routing_key, body, {}, None)

    def flush(self) -> None:
        pass

    def next_reply(self, timeout: float):
        return self.replies.get(timeout=timeout)

    def logins_by_service(self) -> Counter:
        return self.runtime.tokens.logins_by_reason

    def dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        return list(self.outbox.dead)

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.runtime.close()


class RabbitGateway:
    """The same workers, in this process, on a real RabbitMQ; the HIS uses the real producers."""

    def __init__(self, url: str, settings: WorkerSettings, *, reply_key: str) -> None:
        from producers.publisher import BatchPublisher, Publisher
        from producers.replies import ReplyListener
        from workers.process import declare_topology
        from workers.token_share import RabbitTokenShare, new_key

        self.description = f"RabbitMQ at {url.split('@')[-1]}"
        declare_topology(url)
        self.broker = rabbit_broker(url)
        share = RabbitTokenShare(url=url, key_b64=new_key())
        self.runtime = build_runtime(settings, broker=self.broker, outbox=RabbitOutbox(url=url),
                                     share=share)
        self.listener = ReplyListener(url, routing_key=reply_key)
        self.publisher = BatchPublisher(url=url)
        self.raw = Publisher(url=url)
        self.worker = dramatiq.Worker(self.broker, worker_threads=settings.threads, worker_timeout=100)
        self.worker.start()

    def publish(self, request: RequestEnvelope) -> None:
        self.publisher.publish(request)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        self.publisher.flush(timeout=60)
        self.raw.submit_raw(routing_key, body)

    def flush(self) -> None:
        self.publisher.flush(timeout=120)

    def next_reply(self, timeout: float):
        return self.listener.get(timeout=timeout)

    def logins_by_service(self) -> Counter:
        return self.runtime.tokens.logins_by_reason

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.publisher.close()
        self.raw.close()
        self.listener.close()
        self.runtime.close()
