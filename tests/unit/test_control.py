"""The worker side of `eeszt-gw status` (in-flight registry, middleware, control answers), and
the pieces of the status command that need no broker (certificate expiry, message facts)."""

from __future__ import annotations

import base64
import io
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eeszt_gw.ops.status import attention, exit_code
from eeszt_gw.ops.status_broker import message_facts, rabbitmqctl_queue_names, vhost_of
from eeszt_gw.ops.status_certs import cert_state, check_certificates
from schemas.card import LOGIN_ANSWERS_QUEUE
from eeszt_gw.amqp import safe_url
from workers.broker import wrap_delivery
from workers.middleware.control import (ControlResponder, InFlight, InFlightMiddleware,
                                        describe_message)

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def envelope(mtype: str = "erecept.submit", mid: str = "0e924869-2bd9-49f8-837a-0966d6512b2a",
             created_at: str = "2026-11-26T07:58:00Z") -> bytes:
    return json.dumps({"message_id": mid, "idempotency_key": "rx-1", "institution": "H100200",
                       "created_at": created_at, "payload": {"type": mtype}}).encode()


# --- InFlight ------------------------------------------------------------------------------------
def test_in_flight_registry_starts_finishes_and_snapshots_oldest_first() -> None:
    clock = iter([100.0, 90.0]).__next__
    reg = InFlight(clock=clock)
    # Given two requests started at 100 and 90
    k1 = reg.start("m-1", "eRecept", "erecept.submit")
    k2 = reg.start("m-2", "eht", "ehr.submit", key="delivery-2")
    # When we look, then the older comes first, with every field
    assert reg.snapshot() == [
        {"message_id": "m-2", "service": "eht", "message_type": "ehr.submit", "started_at": 90.0},
        {"message_id": "m-1", "service": "eRecept", "message_type": "erecept.submit",
         "started_at": 100.0}]
    assert (k1, k2) == ("m-1", "delivery-2")
    # When one finishes (twice, and an unknown key), then only the other is left
    reg.finish(k1)
    reg.finish(k1)
    reg.finish("nobody")
    reg.finish(None)
    assert [e["message_id"] for e in reg.snapshot()] == ["m-2"]
    # And a snapshot is a copy
    reg.snapshot()[0]["service"] = "changed"
    assert reg.snapshot()[0]["service"] == "eht"


def test_in_flight_registry_is_thread_safe() -> None:
    reg = InFlight()

    def work(n: int) -> None:
        for i in range(500):
            key = reg.start(f"{n}-{i}", "eRecept", "erecept.submit")
            reg.snapshot()
            reg.finish(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg) == 0


# --- the middleware ------------------------------------------------------------------------------
def test_middleware_records_a_request_while_its_actor_runs() -> None:
    reg = InFlight()
    mw = InFlightMiddleware(reg)
    # Given a real delivery wrapped the way the gateway's broker wraps it
    msg = wrap_delivery(queue="eeszt.interactive", body=envelope(), routing_key="erecept.submit",
                        message_id="amqp-id")
    # When the worker starts it, then it is in flight with the request's own id and service
    mw.before_process_message(None, msg)
    (entry,) = reg.snapshot()
    assert (entry["message_id"], entry["service"], entry["message_type"]) == (
        "0e924869-2bd9-49f8-837a-0966d6512b2a", "eRecept", "erecept.submit")
    # When it ends (here: with an exception), then it is gone
    mw.after_process_message(None, msg, exception=RuntimeError("boom"))
    assert reg.snapshot() == []


def test_middleware_forgets_a_skipped_message_and_ignores_login_events() -> None:
    reg = InFlight()
    mw = InFlightMiddleware(reg)
    msg = wrap_delivery(queue="eeszt.batch", body=envelope("event.start"), routing_key="event.start")
    mw.before_process_message(None, msg)
    assert reg.snapshot()[0]["service"] == "esemenyKatalogus"
    mw.after_skip_message(None, msg)
    assert reg.snapshot() == []
    # Login events (card answers) are not requests
    login = wrap_delivery(queue=LOGIN_ANSWERS_QUEUE, body=b'{"event": "answer"}')
    mw.before_process_message(None, login)
    assert reg.snapshot() == []
    mw.after_process_message(None, login)


@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", b"not json", b"[1, 2]", b'{"payload": 5}',
                                  b'{"message_id": 7, "payload": {"type": ["x"]}}', b""])
def test_middleware_tolerates_garbage_bodies(body: bytes) -> None:
    reg = InFlight()
    mw = InFlightMiddleware(reg)
    # Given garbage with only the delivery's facts to go on
    msg = wrap_delivery(queue="eeszt.interactive", body=body, routing_key="ebeutalo.submit",
                        message_id="amqp-7")
    mw.before_process_message(None, msg)
    # Then it is still recorded, from the AMQP message id and the routing key
    (entry,) = reg.snapshot()
    assert (entry["message_id"], entry["service"], entry["message_type"]) == (
        "amqp-7", "eBeutalo", "ebeutalo.submit")
    mw.after_process_message(None, msg)
    assert reg.snapshot() == []


@pytest.mark.parametrize("args", [(), None, ("%%%", None), (None, "meta"), (b"x", {}), 5])
def test_middleware_tolerates_malformed_arguments(args) -> None:
    reg = InFlight()
    mw = InFlightMiddleware(reg)
    msg = SimpleNamespace(args=args, actor_name="unroutable", queue_name="eeszt.interactive",
                          message_id="d-1")
    mw.before_process_message(None, msg)
    assert reg.snapshot()[0]["service"] is None
    mw.after_process_message(None, msg)
    assert reg.snapshot() == []
    # A message object without args or id at all is still tracked by identity
    bare = SimpleNamespace()
    mw.before_process_message(None, bare)
    mw.after_process_message(None, bare)
    assert reg.snapshot() == []


def test_describe_message_prefers_the_body_over_the_delivery_facts() -> None:
    body_b64 = base64.b64encode(envelope("eprofil.update", mid="body-id")).decode()
    assert describe_message((body_b64, {"message_id": "amqp", "type": "erecept.submit"})) == (
        "body-id", "eProfil", "eprofil.update")


# --- the control answer ----------------------------------------------------------------------------
def test_control_answer_carries_process_facts_in_flight_and_login_waits() -> None:
    responder = ControlResponder("amqp://guest:guest@127.0.0.1:1/%2F",
                                 in_flight=lambda: [{"message_id": "m"}],
                                 info={"queues": ["eeszt.interactive"], "threads": 4},
                                 login_waits=lambda: ["O10003", "O10001", "O10003"],
                                 breakers=lambda: [{"service": "eht", "state": "open",
                                                    "since": 1_000.0, "parked": 3}])
    answer = responder.answer({"op": "status", "id": "x"})
    assert answer["pid"] > 0 and answer["host"]
    assert answer["queues"] == ["eeszt.interactive"] and answer["threads"] == 4
    assert answer["in_flight"] == [{"message_id": "m"}]
    assert answer["login_waits"] == ["O10001", "O10003"]
    assert answer["breakers"] == [{"service": "eht", "state": "open", "since": 1_000.0,
                                   "parked": 3}]
    json.dumps(answer)  # what goes on the wire
    # Anything but a status request is ignored
    assert responder.answer({"op": "shutdown"}) is None
    assert responder.answer(["status"]) is None


def test_control_answer_reports_a_failing_callable_instead_of_staying_silent() -> None:
    def broken() -> list:
        raise RuntimeError("registry gone")

    answer = ControlResponder("amqp://x", in_flight=broken, info={}).answer({"op": "status"})
    assert answer["in_flight"] == [] and "registry gone" in answer["error"]
    assert "login_waits" not in answer  # no callable: the status command says "unknown"
    assert "breakers" not in answer
    # A failing breakers callable is reported too, and the rest of the answer still comes
    answer = ControlResponder("amqp://x", in_flight=lambda: [{"message_id": "m"}],
                              breakers=broken).answer({"op": "status"})
    assert answer["in_flight"] == [{"message_id": "m"}] and "breakers" not in answer
    assert answer["error"] == "breakers: RuntimeError: registry gone"


def test_status_lists_circuits_open_first_and_skips_garbage() -> None:
    from eeszt_gw.ops.status import circuits

    now = 10_000.0
    workers = [
        {"pid": 1, "host": "gw-1", "breakers": [
            {"service": "eRecept", "state": "closed", "since": now - 3600},
            {"service": "eht", "state": "half-open", "since": now - 30, "failures": 5},
            "garbage", {"state": "open"}, {"service": "eProfil", "state": "open", "since": "x"}]},
        {"pid": 2, "host": "gw-2", "breakers": None},
        {"pid": 3, "host": "gw-1"},  # an older worker: no breakers at all
    ]
    listed = circuits(workers, now)
    assert [(c["service"], c["state"], c["pid"]) for c in listed] == [
        ("eProfil", "open", 1), ("eht", "half-open", 1), ("eRecept", "closed", 1)]
    assert [c["for_s"] for c in listed] == [None, 30.0, 3600.0]
    assert attention({"dead_letters": {"total": 0}, "totals": {"over_time_limit": 0, "parked": 0},
                      "certificates": [], "time_limit_s": 600, "circuits": listed}) == [
        "circuit of eProfil open in 1 worker process(es): its requests are parked "
        "(see eeszt.parked.eProfil)",
        "circuit of eht open in 1 worker process(es) for up to 30s: its requests are parked "
        "(see eeszt.parked.eht)"]


# --- certificates ----------------------------------------------------------------------------------
def write_cert(path: Path, days: float, *, now: datetime = NOW) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=400)).not_valid_after(now + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_expiring_in_10_days_is_flagged_and_one_in_100_days_is_not(tmp_path) -> None:
    soon = cert_state(write_cert(tmp_path / "access.pem", 10), now=NOW, warn_days=30)
    later = cert_state(write_cert(tmp_path / "institution.pem", 100), now=NOW, warn_days=30)
    assert soon["state"] == "expiring" and soon["days_left"] == pytest.approx(10, abs=0.01)
    assert later["state"] == "ok" and later["days_left"] == pytest.approx(100, abs=0.01)
    assert soon["subject"] == "CN=access"
    # The warning window is the caller's
    assert cert_state(tmp_path / "institution.pem", now=NOW, warn_days=120)["state"] == "expiring"


def test_certificate_states_expired_missing_unreadable_and_bundles(tmp_path) -> None:
    expired = cert_state(write_cert(tmp_path / "sts.pem", -2), now=NOW, warn_days=30)
    assert expired["state"] == "expired" and expired["days_left"] == pytest.approx(-2, abs=0.01)
    assert cert_state(tmp_path / "nope.pem", now=NOW, warn_days=30)["state"] == "missing"
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert cert_state(tmp_path / "junk.pem", now=NOW, warn_days=30)["state"] == "unreadable"
    # A bundle counts by its earliest notAfter
    a = write_cert(tmp_path / "a.pem", 100).read_bytes()
    b = write_cert(tmp_path / "b.pem", 10).read_bytes()
    (tmp_path / "server-ca.pem").write_bytes(a + b)
    bundle = cert_state(tmp_path / "server-ca.pem", now=NOW, warn_days=30)
    assert bundle["days_left"] == pytest.approx(10, abs=0.01)


def test_check_certificates_lists_the_gateways_files(tmp_path) -> None:
    write_cert(tmp_path / "access.pem", 10)
    write_cert(tmp_path / "institution.pem", 100)
    states = {c["file"]: c["state"] for c in check_certificates(tmp_path, now=NOW, warn_days=30)}
    assert states == {"access.pem": "expiring", "institution.pem": "ok", "server-ca.pem": "missing",
                      "sts.pem": "missing", "challenge.pem": "missing"}
    assert check_certificates(tmp_path / "absent", now=NOW) == []


# --- what a browsed message tells ------------------------------------------------------------------
def test_message_facts_age_from_first_seen_then_timestamp_then_created_at() -> None:
    now = NOW.timestamp()
    first_seen = SimpleNamespace(headers={"eeszt-type": b"ebeutalo.submit",
                                          "eeszt-first-seen": int((now - 90) * 1000)},
                                 timestamp=int(now - 5))
    assert message_facts(first_seen, b"", now) == ("eBeutalo", pytest.approx(90, abs=0.01), None)
    stamped = SimpleNamespace(headers={"eeszt-type": "ehr.submit", "eeszt-code": "GW-FAILED"},
                              timestamp=int(now - 30))
    assert message_facts(stamped, b"", now) == ("eht", 30, "GW-FAILED")
    bare = SimpleNamespace(headers=None, timestamp=None)
    assert message_facts(bare, envelope(), now) == ("eRecept", pytest.approx(120), None)
    assert message_facts(bare, b"\xff garbage", now) == ("unknown", None, None)


def test_urls_rabbitmqctl_and_exit_codes() -> None:
    assert safe_url("amqp://guest:secret@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert vhost_of("amqp://h/%2F") == "/" and vhost_of("amqp://h") == "/"
    assert vhost_of("amqp://h/eeszt-test-1") == "eeszt-test-1"
    # rabbitmqctl only speaks for the node on this host
    assert rabbitmqctl_queue_names("amqp://g:g@broker.example.org/x",
                                   run=lambda *a, **k: pytest.fail("must not run")) is None
    report = {"dead_letters": {"total": 0}, "totals": {"over_time_limit": 0, "parked": 0},
              "certificates": [{"file": "access.pem", "state": "ok", "days_left": 300}],
              "time_limit_s": 600}
    assert attention(report) == []
    assert exit_code({**report, "healthy": True}) == 0
    report["totals"]["parked"] = 3
    report["certificates"][0].update(state="expiring", days_left=12.5)
    assert attention(report) == ["3 parked request(s)",
                                 "certificate access.pem: expiring (12.5 days left)"]


def test_render_prints_every_section() -> None:
    from rich.console import Console

    from eeszt_gw.ops.status_view import age, render

    row = {"queued": None, "in_flight": 1, "over_time_limit": 1, "retrying": 0, "parked": 0,
           "waiting_login": 2, "dead_letters": 1, "oldest_waiting_s": 125.0}
    report = {"broker": "amqp://guest:***@h/v", "at": "2026-11-26T08:00:00+00:00",
              "time_limit_s": 600, "cert_warn_days": 30, "services": {"eRecept": row},
              "totals": {**row, "queued": 4}, "queues": {"eeszt.interactive": 4, "eeszt.batch": None},
              "workers": [{"pid": 1, "host": "gw", "queues": ["eeszt.interactive"]}],
              "circuits": [{"service": "eht", "state": "open", "for_s": 310.0, "failures": 5,
                            "last_probe_at": NOW.timestamp(), "parked": 12, "pid": 1,
                            "host": "gw"},
                           {"service": "eRecept", "state": "closed", "for_s": 9.0, "pid": 1,
                            "host": "gw"}],
              "in_flight": [{"message_id": "m", "service": "eRecept", "message_type": "erecept.submit",
                             "age_s": 1200, "over_time_limit": True, "pid": 1, "host": "gw"}],
              "login_waits": {"source": "workers", "doctors": {"O10003": {"waiting": 2, "oldest_s": 60}}},
              "dead_letters": {"total": 1, "by_service": {"eRecept": 1}, "by_code": {"GW-FAILED": 1},
                               "oldest_s": 30},
              "certificates": [{"file": "access.pem", "role": "mTLS", "state": "expiring",
                                "days_left": 19.9, "not_after": "2026-12-16T00:00:00+00:00"}],
              "notes": ["a note"], "attention": ["1 dead letter(s) in eeszt.dlq"]}
    out = io.StringIO()
    render(report, Console(file=out, width=100))
    text = out.getvalue()
    for needle in ("eRecept", "in flight longer than 10m 0s", "O10003 2", "GW-FAILED 1",
                   "access.pem", "eeszt.batch absent", "ATTENTION", "a note",
                   "circuits not closed: 1",
                   "eht open for 5m 10s (pid 1@gw): 5 failures in a row, last probe 08:00:00Z, "
                   "12 parked"):
        assert needle in text, text
    # With every circuit closed, one line says so
    out = io.StringIO()
    render({**report, "circuits": report["circuits"][1:]}, Console(file=out, width=100))
    assert "circuits: all closed" in out.getvalue()
    assert (age(None), age(12), age(1503), age(7300), age(90000)) == ("—", "12s", "25m 3s",
                                                                      "2h 1m", "1d 1h")


def test_middleware_in_a_real_dramatiq_worker() -> None:
    import dramatiq

    from workers.broker import stub_broker

    # Given the gateway's stub broker with the middleware, and an actor that holds its thread
    reg = InFlight()
    broker = stub_broker()
    broker.add_middleware(InFlightMiddleware(reg))
    entered, release = threading.Event(), threading.Event()

    def eRecept(body_b64: str, meta: dict) -> None:
        entered.set()
        release.wait(10)

    dramatiq.actor(eRecept, actor_name="eRecept", queue_name="eeszt.interactive", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        # When a request is being processed, then it is in flight
        broker.enqueue(wrap_delivery(queue="eeszt.interactive", body=envelope(mid="live"),
                                     routing_key="erecept.submit"))
        assert entered.wait(10)
        assert [(e["message_id"], e["service"]) for e in reg.snapshot()] == [("live", "eRecept")]
        # When it is done, then it is not
        release.set()
        broker.join("eeszt.interactive", timeout=10_000)
        worker.join()
        assert reg.snapshot() == []
    finally:
        release.set()
        worker.stop()
        broker.close()
