"""Queue types: every durable queue the gateway declares gets its arguments from one function
(``schemas.wire.queue_arguments``), so that all declarers agree on ``x-queue-type`` and on
at-least-once dead-lettering for quorum. Offline: recording fake channels, no broker.

The real broker's side (quorum vhost, delays, priorities, dead letters) is
``tests/integration/test_quorum_queues.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from schemas.card import LOGIN_ANSWERS_QUEUE
from schemas.wire import (
    BATCH_QUEUE,
    DEAD_LETTER_QUEUE,
    INTERACTIVE_QUEUE,
    LOGIN_DELAY_QUEUE,
    QUORUM_ARGUMENTS,
    RETRY_TIERS_S,
    check_queue_type,
    login_pending_queue,
    login_wait_queue,
    parked_queue,
    queue_arguments,
    retry_queue,
    work_queue_arguments,
)

URL = "amqp://guest:guest@127.0.0.1:1/%2F"  # never connected to
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


class RecordingChannel:
    """Records queue declarations (name -> arguments and flags); everything else is a no-op."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, dict[str, Any]] = {}

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None):
        if passive:  # a check (a card bridge listening on its workstation queue): one does
            assert queue in self.queues, f"{queue} checked before it was declared"
            return SimpleNamespace(method=SimpleNamespace(consumer_count=1, message_count=0))
        assert queue not in self.queues or self.queues[queue] == (arguments or {}), \
            f"{queue} declared twice with other arguments"
        self.queues[queue] = dict(arguments or {})
        self.flags[queue] = {"durable": durable, "exclusive": exclusive,
                             "auto_delete": auto_delete}

    def __getattr__(self, name: str):
        return lambda *a, **kw: None  # exchange_declare, queue_bind, basic_qos, ...


def workers_topology(queue_type: str) -> RecordingChannel:
    from workers.topology import declare

    ch = RecordingChannel()
    declare(ch, queue_type)
    return ch


# --- the function itself ----------------------------------------------------------------------
def test_classic_names_its_type_and_keeps_the_arguments():
    assert queue_arguments("classic") == {"x-queue-type": "classic"}
    assert work_queue_arguments(BATCH_QUEUE) == {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "eeszt.batch.XQ",
        "x-queue-type": "classic"}


def test_quorum_dead_letters_at_least_once_only_where_it_dead_letters():
    assert queue_arguments("quorum") == {"x-queue-type": "quorum", **QUORUM_ARGUMENTS}
    args = work_queue_arguments(INTERACTIVE_QUEUE, "quorum")
    assert args == {"x-dead-letter-exchange": "", "x-queue-type": "quorum", **AT_LEAST_ONCE,
                    **QUORUM_ARGUMENTS, "x-dead-letter-routing-key": "eeszt.interactive.XQ"}
    # the caller's mapping is not changed
    given = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q"}
    queue_arguments("quorum", given)
    assert given == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q"}


def test_quorum_refuses_an_overflow_that_would_silently_undo_at_least_once():
    with pytest.raises(ValueError, match="reject-publish"):
        queue_arguments("quorum", {"x-dead-letter-exchange": "", "x-overflow": "drop-head"})
    assert queue_arguments("classic", {"x-overflow": "drop-head"})["x-overflow"] == "drop-head"


@pytest.mark.parametrize("bad", ["", "Quorum", "stream", "lazy"])
def test_unknown_queue_types_are_refused(bad):
    with pytest.raises(ValueError, match="classic or quorum"):
        check_queue_type(bad)
    with pytest.raises(ValueError):
        queue_arguments(bad)


# --- every declarer ---------------------------------------------------------------------------
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_the_workers_topology_types_every_queue_and_never_asks_for_priorities(queue_type):
    ch = workers_topology(queue_type)
    expected = {INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE, LOGIN_ANSWERS_QUEUE,
                LOGIN_DELAY_QUEUE} | {retry_queue(q, t) for q in (INTERACTIVE_QUEUE, BATCH_QUEUE)
                                      for t in RETRY_TIERS_S}
    assert set(ch.queues) == expected
    for name, args in ch.queues.items():
        assert args["x-queue-type"] == queue_type, name
        assert "x-max-priority" not in args, name
        assert ch.flags[name] == {"durable": True, "exclusive": False, "auto_delete": False}
        dead_letters = "x-dead-letter-exchange" in args
        assert (args.get("x-dead-letter-strategy") == "at-least-once") == (
            dead_letters and queue_type == "quorum"), name
    # a retry tier hands its expired requests back to its own work queue
    assert ch.queues[retry_queue(BATCH_QUEUE, 30)]["x-dead-letter-routing-key"] == BATCH_QUEUE
    assert ch.queues[LOGIN_DELAY_QUEUE]["x-dead-letter-routing-key"] == LOGIN_ANSWERS_QUEUE


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_producers_declare_the_shared_queues_exactly_as_the_workers(queue_type):
    from producers.topology import declare_topology

    ch = RecordingChannel()
    declare_topology(ch, queue_type)
    workers = workers_topology(queue_type).queues
    assert set(ch.queues) == {INTERACTIVE_QUEUE, BATCH_QUEUE, DEAD_LETTER_QUEUE}
    for name, args in ch.queues.items():
        assert args == workers[name], name


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_dramatiq_declares_its_queues_like_the_topology(queue_type):
    from workers.broker import rabbit_broker

    broker = rabbit_broker(URL, queue_type=queue_type)
    ch = RecordingChannel()
    broker.state.channel = ch  # dramatiq's channel property returns the thread's channel
    broker._declare_queue(BATCH_QUEUE)
    broker._declare_dq_queue(BATCH_QUEUE)
    broker._declare_xq_queue(BATCH_QUEUE)
    workers = workers_topology(queue_type).queues
    assert ch.queues[BATCH_QUEUE] == workers[BATCH_QUEUE]
    assert ch.queues["eeszt.batch.DQ"] == workers[BATCH_QUEUE]
    xq = ch.queues["eeszt.batch.XQ"]
    assert xq["x-queue-type"] == queue_type and xq["x-message-ttl"] > 0
    assert not any("x-max-priority" in a for a in ch.queues.values())


def test_the_default_is_classic_everywhere(monkeypatch):
    from workers.broker import rabbit_broker
    from workers.outbox import RabbitOutbox
    from workers.settings import WorkerSettings

    assert rabbit_broker(URL).queue_type == "classic"
    assert RabbitOutbox(url=URL).queue_type == "classic"
    monkeypatch.delenv("EESZT_QUEUE_TYPE", raising=False)
    assert WorkerSettings().queue_type == "classic"


class FakeOutbox:
    """A RabbitOutbox whose channel records and whose publishes vanish."""

    def __init__(self, queue_type: str) -> None:
        from workers.outbox import RabbitOutbox

        self.box = RabbitOutbox(url=URL, queue_type=queue_type)
        self.ch = RecordingChannel()
        self.box._channel = lambda: self.ch
        self.box._publish = lambda *a, **kw: None


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_retry_and_parked_queues_get_the_type_and_match_the_topology(queue_type):
    fake = FakeOutbox(queue_type)
    fake.box.retry(BATCH_QUEUE, b"{}", {}, 40.0, "m1")
    fake.box.park("eRecept", INTERACTIVE_QUEUE, b"{}", {}, 60_000, "m2")
    tier = retry_queue(BATCH_QUEUE, 30)
    assert fake.ch.queues[tier] == workers_topology(queue_type).queues[tier]
    parked = fake.ch.queues[parked_queue("eRecept")]
    assert parked == queue_arguments(queue_type, {"x-dead-letter-exchange": "",
                                                  "x-dead-letter-routing-key": INTERACTIVE_QUEUE})


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_login_queues_are_typed_except_the_pending_lock(queue_type):
    from workers.logins.backends import RabbitLoginBackend

    fake = FakeOutbox(queue_type)
    logins = RabbitLoginBackend(outbox=fake.box, window_s=60, challenge_ttl_s=60)
    logins.park("O10001", queue=INTERACTIVE_QUEUE, body=b"{}", headers={}, ttl_ms=1000,
                message_id="m")
    assert logins.begin("O10001", marker=b"{}") is True
    challenge = SimpleNamespace(workstation="WS-01", challenge_id="c1",
                                model_dump_json=lambda: "{}")  # all send_challenge reads
    logins.send_challenge(challenge)
    wait = fake.ch.queues[login_wait_queue("O10001")]
    assert wait["x-queue-type"] == queue_type
    assert wait["x-dead-letter-routing-key"] == INTERACTIVE_QUEUE
    assert (wait.get("x-dead-letter-strategy") == "at-least-once") == (queue_type == "quorum")
    assert fake.ch.queues["eeszt.card.WS-01"] == queue_arguments(queue_type)
    # a lock: quorum queues enforce x-max-length only lazily, so it stays classic
    pending = fake.ch.queues[login_pending_queue("O10001")]
    assert pending["x-queue-type"] == "classic" and pending["x-max-length"] == 1
    assert "x-dead-letter-strategy" not in pending


# --- the settings -----------------------------------------------------------------------------
def test_worker_flag_and_environment_set_the_queue_type(monkeypatch):
    from eeszt_gw.cli import build_parser
    from eeszt_gw.config import load
    from workers.settings import WorkerSettings

    def queue_type(*args: str) -> str:
        ns = build_parser().parse_args(["worker", *args])
        return load(WorkerSettings, ns, "worker").queue_type

    monkeypatch.delenv("EESZT_QUEUE_TYPE", raising=False)
    assert queue_type() == "classic"
    assert queue_type("--queue-type", "quorum") == "quorum"
    monkeypatch.setenv("EESZT_QUEUE_TYPE", "quorum")
    assert queue_type() == "quorum"
    assert queue_type("--queue-type", "classic") == "classic"  # the flag wins
    parse = build_parser().parse_args
    with pytest.raises(SystemExit):
        parse(["worker", "--queue-type", "stream"])


def test_producer_commands_take_the_same_setting(monkeypatch):
    from eeszt_gw.cli import build_parser
    from eeszt_gw.config import load
    from producers.settings import PublishSettings, RepliesSettings

    settings_of = {"publish": PublishSettings, "replies": RepliesSettings}

    def _broker(ns):  # the keyword arguments the command hands to its broker client
        return load(settings_of[ns.cmd], ns, ns.cmd).connection()

    parse = build_parser().parse_args
    monkeypatch.delenv("EESZT_QUEUE_TYPE", raising=False)
    assert _broker(parse(["replies"]))["queue_type"] == "classic"
    assert _broker(parse(["publish", "-", "--queue-type", "quorum"]))["queue_type"] == "quorum"
    monkeypatch.setenv("EESZT_QUEUE_TYPE", "quorum")
    assert _broker(parse(["replies"]))["queue_type"] == "quorum"


def test_quorum_queues_state_the_settings_whose_defaults_differ_between_rabbitmq_versions():
    # Given any quorum queue the gateway declares
    for args in (queue_arguments("quorum"), work_queue_arguments(BATCH_QUEUE, "quorum"),
                 queue_arguments("quorum", {"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": DEAD_LETTER_QUEUE})):
        # Then its delivery limit (3.10: none, 4.x: 20) and its replica count are explicit
        assert args["x-delivery-limit"] == 1000
        assert args["x-quorum-initial-group-size"] == 3
    # And a classic queue gets neither: a classic deployment's arguments stay as they were
    assert "x-delivery-limit" not in queue_arguments("classic")
