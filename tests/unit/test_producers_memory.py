"""The producers' in-memory seam, parse_line, the error tree and the publish command's validation.

No broker needed: the commands here never get as far as connecting (only invalid lines), or
connect to a closed port.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import uuid

import pytest

from producers import (
    BatchPublisher,
    BatchRequestPublisher,
    BrokerUnavailable,
    InvalidRequest,
    MemoryPublisher,
    MemoryReplies,
    ProducerError,
    Publisher,
    PublishFailed,
    ReplyListener,
    ReplySource,
    RequestPublisher,
    parse_line,
    safe_url,
)
from producers.cli import register
from producers.topology import MAX_BACKOFF_S, retry_delay
from schemas import Accepted, RequestEnvelope, StatusUpdate, make_taj
from schemas.wire import H_IDEMPOTENCY_KEY, H_TYPE
from tests.samples import TAJ, event_start, prescription

CLOSED_PORT_URL = "amqp://guest:secret@127.0.0.1:1/%2F"


def _accepted(key: str = "rx-1") -> Accepted:
    return Accepted(message_id=uuid.uuid4(), idempotency_key=key, service="eRecept",
                    message_type="erecept.submit", eeszt_id="RX-1", version=1)


# --- MemoryPublisher ----------------------------------------------------------------------------


def test_submit_hands_the_wire_form_to_the_sink() -> None:
    # Given a memory publisher with a recording sink
    seen: list[tuple[str, bytes, dict, str]] = []
    publisher = MemoryPublisher(lambda *message: seen.append(message))
    request = prescription()

    # When a request is submitted
    publisher.submit(request)

    # Then the sink got the routing key, JSON body, headers and message id of the wire format
    ((routing_key, body, headers, message_id),) = seen
    assert routing_key == "erecept.submit"
    assert RequestEnvelope.from_json(body) == request
    assert headers == {H_TYPE: "erecept.submit", H_IDEMPOTENCY_KEY: request.idempotency_key}
    assert message_id == str(request.message_id)


def test_without_a_sink_messages_are_kept_in_sent() -> None:
    # Given a memory publisher without a sink
    publisher = MemoryPublisher()

    # When a request and raw bytes are submitted
    publisher.submit(event_start())
    mid = publisher.submit_raw("test.key", b"{}", {"x": 1})

    # Then both are kept, the raw one under a fresh message id
    assert [m[0] for m in publisher.sent] == ["event.start", "test.key"]
    assert publisher.sent[1] == ("test.key", b"{}", {"x": 1}, mid)


def test_a_refusing_sink_makes_submit_raise_publish_failed() -> None:
    # Given a sink that refuses everything
    def refuse(*_: object) -> None:
        raise RuntimeError("disk full")

    publisher = MemoryPublisher(refuse)
    request = prescription()

    # When a request is submitted, then PublishFailed names the message and the reason
    with pytest.raises(PublishFailed) as caught:
        publisher.submit(request)
    assert caught.value.message_id == str(request.message_id)
    assert "disk full" in caught.value.reason


def test_publish_and_flush_report_confirmed_and_failed() -> None:
    # Given a sink that refuses event starts only
    def sink(routing_key: str, *_: object) -> None:
        if routing_key == "event.start":
            raise RuntimeError("no")

    publisher = MemoryPublisher(sink)
    bad = event_start()

    # When three requests are published and the batch flushed
    with publisher:
        publisher.publish(prescription())
        publisher.publish(bad)
        publisher.publish(prescription())
        summary = publisher.flush()

    # Then two are confirmed, one failed, and the next flush starts from zero
    assert summary.confirmed == 2
    assert [f.message_id for f in summary.failed] == [str(bad.message_id)]
    assert not summary.ok
    assert publisher.flush().confirmed == 0


def test_real_and_memory_implementations_satisfy_the_seam() -> None:
    # Given each implementation (the real ones connect lazily, so nothing is contacted)
    memory = MemoryPublisher()
    real = Publisher(url=CLOSED_PORT_URL)
    batch = BatchPublisher(url=CLOSED_PORT_URL)
    listener = ReplyListener(CLOSED_PORT_URL, routing_key="his.demo")

    # Then they implement the protocols that tests and the demo program against
    assert isinstance(memory, RequestPublisher) and isinstance(real, RequestPublisher)
    assert isinstance(memory, BatchRequestPublisher) and isinstance(batch, BatchRequestPublisher)
    assert isinstance(MemoryReplies(), ReplySource) and isinstance(listener, ReplySource)


# --- MemoryReplies ------------------------------------------------------------------------------


def test_memory_replies_keep_only_their_routing_key() -> None:
    # Given a reply source for his.demo
    replies = MemoryReplies(routing_key="his.demo")

    # When replies arrive for it and for another HIS
    assert replies.deliver("his.demo", _accepted("rx-mine").model_dump_json().encode())
    assert not replies.deliver("his.other", _accepted("rx-theirs").model_dump_json().encode())

    # Then only its own comes out, and then nothing
    reply = replies.get(timeout=1)
    assert reply is not None and reply.idempotency_key == "rx-mine"
    assert replies.get(timeout=0.01) is None


def test_memory_replies_skip_garbage_without_logging_its_body(
        caplog: pytest.LogCaptureFixture) -> None:
    # Given garbage carrying a TAJ, followed by a valid reply
    replies = MemoryReplies()
    replies.deliver("his.demo", json.dumps({"kind": "accepted", "taj": TAJ}).encode())
    replies.deliver("his.demo", _accepted().model_dump_json().encode())

    # When the next reply is read
    with caplog.at_level(logging.WARNING):
        reply = replies.get(timeout=1)

    # Then the garbage was skipped and logged without its content
    assert isinstance(reply, Accepted)
    assert "unparseable" in caplog.text
    assert TAJ not in caplog.text


def test_memory_replies_iterate_across_threads_until_closed() -> None:
    # Given a reader thread iterating over a reply source
    replies = MemoryReplies()
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.extend(r.kind for r in replies))
    reader.start()

    # When another thread delivers replies and then closes the source
    replies.deliver("k", _accepted().model_dump_json().encode())
    replies.deliver("k", StatusUpdate(message_id=uuid.uuid4(), idempotency_key="rx-1",
                                      service="eRecept", message_type="erecept.submit",
                                      state="retrying").model_dump_json().encode())
    replies.close()
    reader.join(timeout=5)

    # Then the reader got both, in order, and stopped
    assert not reader.is_alive()
    assert received == ["accepted", "status"]


def test_listen_stops_when_the_event_is_set() -> None:
    # Given a listener callback that stops after the first reply
    replies, stop = MemoryReplies(), threading.Event()
    got: list[str] = []

    def on_reply(reply: object) -> None:
        got.append(reply.idempotency_key)  # type: ignore[attr-defined]
        stop.set()

    replies.deliver("k", _accepted("rx-a").model_dump_json().encode())
    replies.deliver("k", _accepted("rx-b").model_dump_json().encode())

    # When listening
    replies.listen(on_reply, stop=stop)

    # Then only the first reply was handled
    assert got == ["rx-a"]


# --- parse_line and the error tree --------------------------------------------------------------


def test_parse_line_names_the_field_and_line_without_the_value() -> None:
    # Given a request whose TAJ has a wrong check digit
    data = json.loads(prescription().to_json())
    good = make_taj("12345678")
    bad = good[:8] + str((int(good[8]) + 1) % 10)
    data["payload"]["taj"] = bad

    # When it is parsed as line 17
    with pytest.raises(InvalidRequest) as caught:
        parse_line(json.dumps(data), 17)

    # Then the error names the line, the field and the reason, and not the TAJ
    exc = caught.value
    assert (exc.lineno, exc.field) == (17, "payload.taj")
    assert str(exc) == f"line 17: payload.taj: TAJ check digit is {bad[8]}, expected {good[8]}"
    assert bad not in str(exc)


def test_parse_line_reports_non_json_on_the_whole_request() -> None:
    # When a line is not JSON, then the field is empty and the reason says so
    with pytest.raises(InvalidRequest) as caught:
        parse_line("{not json", 3)
    assert caught.value.field == ""
    assert "JSON" in caught.value.reason


def test_every_error_is_a_producer_error() -> None:
    # Then one except clause catches the whole tree
    for exc in (BrokerUnavailable("x", attempts=1), PublishFailed("m", "r"),
                InvalidRequest("f", "r")):
        assert isinstance(exc, ProducerError)


def test_broker_urls_are_logged_without_password() -> None:
    assert safe_url(CLOSED_PORT_URL) == "amqp://guest:***@127.0.0.1:1/%2F"
    assert safe_url("amqp://127.0.0.1/") == "amqp://127.0.0.1/"


def test_retry_delay_grows_with_jitter_and_stays_bounded() -> None:
    # Then the n-th pause is around backoff * 2**(n-1), within ±50 %, and capped
    for attempt in range(1, 6):
        assert 0.05 * 2 ** (attempt - 1) <= retry_delay(attempt, 0.1) <= 0.15 * 2 ** (attempt - 1)
    assert retry_delay(50, 0.2) <= MAX_BACKOFF_S * 1.5


# --- the publish command before it reaches a broker ---------------------------------------------


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args(list(argv))
    return ns.func(ns)


def test_publish_command_lists_invalid_lines_with_field_and_reason(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a file with two invalid lines and a blank one (no valid line: no broker needed)
    data = json.loads(prescription().to_json())
    data["payload"]["bno"] = "j069"
    path = tmp_path / "in.jsonl"
    path.write_text("{oops\n\n" + json.dumps(data) + "\n", encoding="utf-8")

    # When it is published
    code = _run("publish", str(path), "--broker-url", CLOSED_PORT_URL, "--no-progress")

    # Then each invalid line is reported with its number and field, and the run succeeds
    out, err = capsys.readouterr()
    assert code == 0
    assert "line 1: (request): Invalid JSON" in err
    assert "line 3: payload.bno: BNO code must be" in err
    assert "lines read: 3, published: 0, invalid: 2, failed: 0" in out


def test_publish_command_exits_2_without_traceback_when_the_broker_is_down(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a valid line and a broker URL on a closed port
    path = tmp_path / "in.jsonl"
    path.write_text(prescription().to_json().decode() + "\n", encoding="utf-8")

    # When it is published with one connection attempt
    code = _run("publish", str(path), "--broker-url", CLOSED_PORT_URL,
                "--broker-connect-attempts", "1", "--no-progress")

    # Then the exit status is 2 and the error is one line, password masked
    err = capsys.readouterr().err
    assert code == 2
    assert "error: broker amqp://guest:***@127.0.0.1:1/%2F unreachable after 1 attempt " in err
    assert "Traceback" not in err and "secret" not in err


# --- the settings of publish and replies ----------------------------------------------------------

_SETTINGS_ENV = ("EESZT_QUEUE_TYPE", "EESZT_BROKER_URL", "EESZT_BROKER_CONNECT_TIMEOUT_S",
                 "EESZT_BROKER_CONNECT_ATTEMPTS", "EESZT_BROKER_RETRY_BACKOFF_S",
                 "EESZT_MAX_IN_FLIGHT", "EESZT_CONFIRM_TIMEOUT_S", "EESZT_REPLY_ROUTING_KEY",
                 "EESZT_REPLY_QUEUE", "EESZT_CONFIG")


@pytest.fixture
def settings_of(monkeypatch):
    """The settings a producer command line would run with (flags > env > file > defaults)."""
    from eeszt_gw.cli import build_parser
    from eeszt_gw.config import load

    for var in _SETTINGS_ENV:
        monkeypatch.delenv(var, raising=False)

    def settings_of(*argv: str):
        ns = build_parser().parse_args(list(argv))
        return load(ns.settings_class, ns, argv[0])
    return settings_of


def test_the_queue_type_choices_are_the_topologys():
    # (flag and environment: tests/unit/test_queue_types.py)
    from producers.settings import ProducerSettings
    from schemas.wire import DEFAULT_QUEUE_TYPE, QUEUE_TYPES

    field = ProducerSettings.model_fields["queue_type"]
    assert field.annotation.__args__ == QUEUE_TYPES and field.default == DEFAULT_QUEUE_TYPE


def test_the_broker_connection_settings_reach_the_clients(settings_of, monkeypatch):
    # Given the connection settings in the environment, and one as a flag
    monkeypatch.setenv("EESZT_BROKER_CONNECT_TIMEOUT_S", "2.5")
    monkeypatch.setenv("EESZT_BROKER_CONNECT_ATTEMPTS", "9")
    monkeypatch.setenv("EESZT_BROKER_RETRY_BACKOFF_S", "0.5")
    # (the old names of these settings are not read: EESZT_CONNECT_TIMEOUT is not theirs)
    monkeypatch.setenv("EESZT_CONNECT_TIMEOUT", "99")
    monkeypatch.setenv("EESZT_RETRY_ATTEMPTS", "99")
    s = settings_of("replies", "--broker-connect-attempts", "3", "--reply-queue", "q")
    # Then the clients get them under their own keyword names
    assert s.connection() == {"tls": None, "queue_type": "classic", "connect_timeout": 2.5,
                              "retry_attempts": 3, "retry_backoff": 0.5}
    assert (s.reply_routing_key, s.reply_queue) == ("his.demo", "q")
    # And an empty variable counts as unset
    monkeypatch.setenv("EESZT_BROKER_URL", "")
    monkeypatch.setenv("EESZT_MAX_IN_FLIGHT", "")
    p = settings_of("publish", "-")
    assert p.broker_url == "amqp://guest:guest@127.0.0.1:5672/%2F" and p.max_in_flight == 256


def test_the_producer_settings_can_come_from_a_config_file(settings_of, tmp_path, monkeypatch):
    conf = tmp_path / "his.toml"
    conf.write_text('broker_connect_attempts = 2\n[publish]\nmax_in_flight = 32\n'
                    '[replies]\nreply_routing_key = "his.medsol"\n')
    monkeypatch.setenv("EESZT_CONFIG", str(conf))
    p = settings_of("publish", "-")
    assert (p.broker_connect_attempts, p.max_in_flight) == (2, 32)
    assert settings_of("replies").reply_routing_key == "his.medsol"


@pytest.mark.parametrize("argv, says", [
    (["publish", "-", "--max-in-flight", "0"], "error: --max-in-flight: "),
    (["publish", "-", "--confirm-timeout-s", "0"], "error: --confirm-timeout-s: "),
    (["replies", "--broker-connect-timeout-s", "-1"], "error: --broker-connect-timeout-s: "),
    (["replies", "--no-declare", "--transient"],
     "error: --transient declares a queue; --no-declare declares nothing"),
    (["publish", "/nonexistent/in.jsonl"], "error: [Errno 2] No such file or directory"),
    (["publish", "-", "--broker-url", "http://127.0.0.1/"], "error: broker: "),
])
def test_a_bad_setting_is_one_error_line_and_exit_status_2(capsys, monkeypatch, argv, says):
    from eeszt_gw.cli import main

    for var in _SETTINGS_ENV:
        monkeypatch.delenv(var, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1, err


def test_a_bad_environment_variable_is_named(capsys, monkeypatch):
    from eeszt_gw.cli import main

    monkeypatch.setenv("EESZT_BROKER_CONNECT_ATTEMPTS", "many")
    assert main(["replies"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --broker-connect-attempts: ")
    assert "(from EESZT_BROKER_CONNECT_ATTEMPTS)" in err
