"""Settings of the HIS-side commands ``publish`` and ``replies``: the one source of their flags.

:func:`eeszt_gw.config.add_settings` makes a flag of every field (``--broker-url``, env
``EESZT_BROKER_URL``) and :func:`eeszt_gw.config.load` builds the settings from the flags, the
``EESZT_*`` environment, the ``--config`` file and the defaults. :class:`ProducerSettings`
holds what both commands share (the broker and how to reach it); each command adds its own.
``generate`` talks to no broker and reads no settings: its flags say what to write.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from eeszt_gw.config import BrokerSettings
from schemas.wire import DEFAULT_QUEUE_TYPE

__all__ = ["ProducerSettings", "PublishSettings", "RepliesSettings"]


class ProducerSettings(BrokerSettings):
    """The broker of a HIS-side command and how to reach it."""

    # An empty variable counts as unset, as it did before these commands had a settings class.
    model_config = SettingsConfigDict(env_prefix="EESZT_", extra="forbid", env_ignore_empty=True)

    queue_type: Literal["classic", "quorum"] = Field(
        default=DEFAULT_QUEUE_TYPE,
        description="type of the durable queues this command declares, as the workers' "
                    "--queue-type: classic, or quorum on a RabbitMQ cluster; every worker and "
                    "producer of a vhost must use the same, RabbitMQ refuses a queue redeclared "
                    "with another")
    broker_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="seconds to wait for one connection attempt to RabbitMQ")
    broker_connect_attempts: int = Field(
        default=5, ge=1, description="connection attempts to RabbitMQ before giving up with exit "
                                     "status 2; the pause between attempts doubles, with jitter")
    broker_retry_backoff_s: float = Field(
        default=0.2, ge=0, description="first pause between two connection attempts, in seconds")

    def connection(self) -> dict[str, Any]:
        """Keyword arguments of the producers' clients (``BatchPublisher``, ``ReplyListener``)
        for this broker; the URL and TLS files are checked first. Raises UsageError."""
        return {"tls": self.checked_broker_tls(), "queue_type": self.queue_type,
                "connect_timeout": self.broker_connect_timeout_s,
                "retry_attempts": self.broker_connect_attempts,
                "retry_backoff": self.broker_retry_backoff_s}


class PublishSettings(ProducerSettings):
    """``eeszt-gw publish``."""

    max_in_flight: int = Field(
        default=256, ge=1, description="confirms outstanding at once; more is faster up to "
                                       "about 256")
    confirm_timeout_s: float = Field(
        default=60.0, gt=0, description="at the end, how long to wait for the last confirms, in "
                                        "seconds, before counting them as failed")


class RepliesSettings(ProducerSettings):
    """``eeszt-gw replies``."""

    reply_routing_key: str = Field(
        default="his.demo", description="the reply_to of your requests: the routing key whose "
                                        "replies to read")
    reply_queue: str | None = Field(
        default=None, description="queue to consume (default: the routing key and .replies, "
                                  "e.g. his.demo.replies)")
