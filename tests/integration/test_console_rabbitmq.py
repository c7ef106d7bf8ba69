"""The console against a real RabbitMQ, in a vhost of its own: the guard in front of every page
and API, and an operator's replay of a dead letter through the same code as `eeszt-gw dlq
replay`: the request is back on its work queue and the audit trail names the operator."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pika
import pytest
from starlette.testclient import TestClient

from eeszt_gw.console.app import create_app
from eeszt_gw.console.settings import ConsoleSettings
from eeszt_gw.console.users import UsersFile
from schemas.wire import (DEAD_LETTER_QUEUE, H_CODE, H_IDEMPOTENCY_KEY, H_MESSAGE_ID, H_REASON,
                          H_REPLAYED, H_TYPE, queue_for_type)
from tests import samples
from tests.conftest import RABBIT_HOST
from workers.middleware.audit_reader import read_audit
from workers.outbox import RabbitOutbox
from workers.process import declare_topology

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def console_broker_url() -> Iterator[str]:
    """A fresh vhost for this module, with the workers' topology declared."""
    name = f"eeszt-console-{uuid.uuid4().hex[:10]}"
    for cmd in (["rabbitmqctl", "-q", "add_vhost", name],
                ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    url = f"amqp://guest:guest@{RABBIT_HOST}/{name}"
    declare_topology(url)
    yield url
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def client_for(console_broker_url, tmp_path_factory):
    users = UsersFile(tmp_path_factory.mktemp("console") / "users.json")
    users.add("olga", "operator", PASSWORD)
    users.add("vera", "viewer", PASSWORD)
    settings = ConsoleSettings(broker_url=console_broker_url, users_file=users.path, wait_s=0.3,
                               rabbitmqctl=False, pki_dir=tmp_path_factory.mktemp("no-pki"))

    def make(user: str | None) -> TestClient:
        c = TestClient(create_app(settings), follow_redirects=False)
        if user:
            token = csrf_of(c.get("/login").text)
            res = c.post("/login", data={"csrf": token, "username": user, "password": PASSWORD})
            assert res.status_code == 303, res.text
        return c

    return make


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def dead_letter(url: str, request, *, reason: str, code: str) -> str:
    """What a worker does with a request it could not answer (workers/pipeline.py)."""
    box = RabbitOutbox(url=url)
    try:
        box.dead_letter(request.to_json(), {
            H_REASON: reason, H_CODE: code, H_MESSAGE_ID: str(request.message_id),
            H_IDEMPOTENCY_KEY: request.idempotency_key, H_TYPE: request.message_type},
            str(request.message_id))
    finally:
        box.close()
    return str(request.message_id)


def take_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch, got = conn.channel(), []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((props, body))
    finally:
        conn.close()


def test_without_a_session_pages_redirect_and_the_api_answers_401(client_for):
    c = client_for(None)
    for path in ("/", "/workers", "/dead-letters", "/audit?id=x"):
        res = c.get(path)
        assert (res.status_code, res.headers.get("location")) == (302, "/login"), path
    for path in ("/api/overview", "/api/dead-letters", "/api/audit?id=x"):
        assert c.get(path).status_code == 401, path


def test_the_overview_api_is_the_status_report_of_the_broker(client_for, console_broker_url):
    take_all(console_broker_url, DEAD_LETTER_QUEUE)
    mid = dead_letter(console_broker_url, samples.prescription(), code="BIZ-001",
                      reason=f"rejected for TAJ {samples.TAJ}")
    try:
        res = client_for("vera").get("/api/overview")
        assert res.status_code == 200
        report = res.json()
        assert report["dead_letters"]["total"] == 1 and samples.TAJ not in res.text
        assert report["dead_letters"]["by_code"] == {"BIZ-001": 1}
        listed = client_for("vera").get("/api/dead-letters").json()
        assert [r["message_id"] for r in listed] == [mid]
        assert samples.TAJ not in listed[0]["reason"]
    finally:
        take_all(console_broker_url, DEAD_LETTER_QUEUE)


def test_post_without_csrf_and_a_viewers_replay_are_403_and_the_dead_letter_stays(
        client_for, console_broker_url):
    take_all(console_broker_url, DEAD_LETTER_QUEUE)
    mid = dead_letter(console_broker_url, samples.prescription(), code="GW-FAILED",
                      reason="EESZT stayed unavailable")
    try:
        operator = client_for("olga")
        assert operator.post("/dead-letters/replay",
                             data={"id": mid, "why": "fixed"}).status_code == 403
        viewer = client_for("vera")
        token = csrf_of(viewer.get("/dead-letters").text)
        assert viewer.post("/dead-letters/replay",
                           data={"id": mid, "why": "fixed", "csrf": token}).status_code == 403
        left = take_all(console_broker_url, DEAD_LETTER_QUEUE)
        assert [p.message_id for p, _ in left] == [mid]
    finally:
        take_all(console_broker_url, DEAD_LETTER_QUEUE)


def test_an_operator_replays_a_dead_letter_back_to_its_work_queue_audited_as_them(
        client_for, console_broker_url):
    # Given a dead letter of a request EESZT did not answer in time, and empty work queues
    take_all(console_broker_url, DEAD_LETTER_QUEUE)
    request = samples.prescription()
    work = queue_for_type(request.message_type)
    take_all(console_broker_url, work)
    mid = dead_letter(console_broker_url, request, code="GW-FAILED",
                      reason="EESZT stayed unavailable until the deadline")
    started = time.time()
    # When the operator logs in, finds it and replays it with a reason
    c = client_for("olga")
    page = c.get("/dead-letters", params={"code": "GW-FAILED"})
    assert page.status_code == 200 and mid in page.text
    res = c.post("/dead-letters/replay",
                 data={"id": mid, "why": "EESZT is back", "csrf": csrf_of(page.text)})
    # Then the console says it was replayed
    assert res.status_code == 200, res.text
    assert f"replayed {mid}" in res.text and "1 replayed, 0 kept" in res.text
    # and the request is on its work queue, body unchanged, marked replayed by the operator
    back = take_all(console_broker_url, work)
    assert len(back) == 1
    props, body = back[0]
    assert body == request.to_json() and props.headers[H_REPLAYED] == "olga"
    # and it left the dead-letter queue
    assert take_all(console_broker_url, DEAD_LETTER_QUEUE) == []
    # and the audit stream records the operator as who, with the reason
    events = [e for e in read_audit(console_broker_url, message_id=mid) if e.event.value == "replayed"]
    assert [(e.actor, e.detail) for e in events] == [("olga", "EESZT is back")]
    assert events[0].at.timestamp() >= started - 1
    # and the console's story of the request shows it
    story = c.get("/api/audit", params={"id": mid}).json()
    assert [(e["event"], e["actor"]) for e in story] == [("replayed", "olga")]


def test_eeszt_gw_console_serves_on_its_port(console_broker_url, tmp_path):
    # Given a users file and a free port
    import socket
    import sys
    import urllib.error
    import urllib.request

    from tests.conftest import ROOT

    users = UsersFile(tmp_path / "users.json")
    users.add("olga", "operator", PASSWORD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # When the command runs
    proc = subprocess.Popen([sys.executable, "-m", "eeszt_gw.cli", "console", "--users-file",
                             str(users.path), "--port", str(port), "--broker-url",
                             console_broker_url, "--no-rabbitmqctl"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/login", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        # Then it answers over HTTP: pages redirect to the login, the API says 401
        with pytest.raises(urllib.error.HTTPError) as page:
            opener.open(base + "/", timeout=5)
        assert page.value.code == 302 and page.value.headers["location"] == "/login"
        with pytest.raises(urllib.error.HTTPError) as api:
            opener.open(base + "/api/overview", timeout=5)
        assert api.value.code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
