"""The console's web application without a broker: login, sessions and their lifetime, CSRF,
roles, the proxy header, and TAJ masking of every page and JSON answer.

The broker side is the real :class:`eeszt_gw.console.data.Gateway` with the ops functions it
calls (the status report, the dead-letter queue, the audit reader) replaced by recorders, so
what is checked is the console's own handling of their data.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from eeszt_gw.console import data
from eeszt_gw.console.app import SESSION_COOKIE, create_app
from eeszt_gw.console.settings import ConsoleSettings
from eeszt_gw.console.users import UsersFile
from eeszt_gw.ops.dlq import ChangeResult, Outcome
from schemas.audit import AuditEvent, AuditKind
from tests import samples

PASSWORD = "correct horse battery staple"
TAJ = samples.TAJ
PAGES = ["/", "/workers", "/dead-letters", "/dead-letters/m-1", "/audit?id=m-1"]
APIS = ["/api/overview", "/api/dead-letters", "/api/audit?id=m-1"]


def report() -> dict[str, Any]:
    """A status report as eeszt_gw.ops.status.collect makes it, with a TAJ in header text."""
    row = {"queued": None, "in_flight": 1, "over_time_limit": 0, "retrying": 0, "parked": 0,
           "waiting_login": 0, "dead_letters": 1, "oldest_waiting_s": 12.0}
    return {"broker": "amqp://guest:***@127.0.0.1:5672/x", "at": "2026-12-07T10:00:00+00:00",
            "time_limit_s": 600.0, "cert_warn_days": 30.0, "services": {"eRecept": row},
            "totals": dict(row), "queues": {}, "truncated": [],
            "workers": [{"pid": 7, "host": "w1", "queues": ["eeszt.interactive"]}],
            "in_flight": [{"message_id": "m-9", "message_type": "eRecept.kivalt",
                           "service": "eRecept", "age_s": 3.0, "over_time_limit": False,
                           "pid": 7, "host": "w1"}],
            "circuits": [{"service": "eRecept", "state": "open", "for_s": 30.0, "failures": 5,
                          "pid": 7, "host": "w1"}],
            "login_waits": {"source": "workers", "doctors": {}},
            "dead_letters": {"total": 1, "by_service": {"eRecept": 1},
                             "by_code": {f"BIZ-001 TAJ {TAJ}": 1}, "oldest_s": 60.0},
            "certificates": [], "notes": [], "cluster": None,
            "attention": [f"patient {TAJ} in a reason"], "healthy": False}


class Recorder:
    """Stands in for the ops functions the Gateway calls, and records the changes asked."""

    def __init__(self) -> None:
        self.changes: list[tuple[AuditKind, Any, str, str]] = []

    def collect(self, opts) -> dict[str, Any]:
        return report()

    def list_dead_letters(self, url, tls, sel) -> list[dict[str, Any]]:
        return [{"message_id": "m-1", "service": "eRecept", "type": "eRecept.kivalt",
                 "code": "GW-FAILED", "reason": f"no answer for {TAJ} <script>x()</script>",
                 "age": "1m 0s",
                 "size": 10, "body": "ok"}]

    def show_dead_letters(self, url, tls, sel) -> list[str]:
        return [f"message m-1\nbody: taj {TAJ}"] if "m-1" in sel.ids else []

    def change(self, url, tls, sel, kind, *, who, why, dry_run=False, on_outcome=None):
        self.changes.append((kind, sel, who, why))
        return ChangeResult(kind, who, why, dry_run,
                            outcomes=[Outcome(i, f"{i} (eRecept.kivalt)", "done") for i in sel.ids])

    def story(self, url, tls, ref, *, since=None, until=None) -> list[AuditEvent]:
        from datetime import datetime, timezone
        return [AuditEvent(message_id=ref, event=AuditKind.DEAD_LETTERED, service="eRecept",
                           at=datetime(2026, 12, 7, tzinfo=timezone.utc), actor="worker",
                           detail=f"TAJ {TAJ}")]


@pytest.fixture()
def users(tmp_path: Path) -> UsersFile:
    u = UsersFile(tmp_path / "users.json")
    u.add("olga", "operator", PASSWORD)
    u.add("vera", "viewer", PASSWORD)
    return u


@pytest.fixture()
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(data, "collect", rec.collect)
    monkeypatch.setattr(data.ops_dlq, "list_dead_letters", rec.list_dead_letters)
    monkeypatch.setattr(data.ops_dlq, "show_dead_letters", rec.show_dead_letters)
    monkeypatch.setattr(data.ops_dlq, "change", rec.change)
    monkeypatch.setattr(data.ops_audit, "story", rec.story)
    return rec


def make_client(users: UsersFile, **settings: Any) -> TestClient:
    s = ConsoleSettings(users_file=users.path, **settings)
    return TestClient(create_app(s), follow_redirects=False)


@pytest.fixture()
def client(users, recorder) -> TestClient:
    return make_client(users)


def csrf_of(page_html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page_html).group(1)


def login(client: TestClient, name: str, password: str = PASSWORD):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"csrf": token, "username": name, "password": password})


def test_without_a_session_pages_redirect_to_login_and_the_api_answers_401(client):
    for path in PAGES:
        res = client.get(path)
        assert (res.status_code, res.headers["location"]) == (302, "/login"), path
    for path in APIS:
        res = client.get(path)
        assert res.status_code == 401 and res.json() == {"error": "not logged in"}, path
    # and a write without a session goes to the login too, changing nothing
    assert client.post("/dead-letters/replay", data={"id": "m-1", "why": "x"}).status_code == 302


def test_login_sets_a_strict_httponly_cookie_and_a_wrong_password_is_logged_without_it(
        client, recorder, caplog):
    caplog.set_level(logging.INFO, "eeszt.console")
    wrong = login(client, "olga", "not the password at all")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert any("failed login for user 'olga'" in r.getMessage() for r in caplog.records)
    assert not any("not the password" in r.getMessage() for r in caplog.records)
    ok = login(client, "olga")
    assert (ok.status_code, ok.headers["location"]) == (303, "/")
    cookie = ok.headers["set-cookie"].lower()
    assert cookie.startswith(SESSION_COOKIE) and "httponly" in cookie
    assert "samesite=strict" in cookie and "secure" not in cookie  # plain HTTP here
    assert client.get("/").status_code == 200
    assert client.get("/api/overview").json()["circuits"][0]["state"] == "open"


def test_the_cookie_is_secure_when_serving_https(users, recorder, tmp_path):
    (tmp_path / "c.pem").write_text("x")
    c = make_client(users, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.pem")
    c.base_url = "https://testserver"
    res = login(c, "olga")
    assert "secure" in res.headers["set-cookie"].lower()


def test_login_needs_the_forms_csrf_token(client):
    client.get("/login")
    res = client.post("/login", data={"username": "olga", "password": PASSWORD})
    assert res.status_code == 403
    assert client.get("/").status_code == 302


def test_a_post_without_or_with_a_wrong_csrf_token_is_403_and_changes_nothing(client, recorder):
    login(client, "olga")
    for form in ({"id": "m-1", "why": "fixed"}, {"id": "m-1", "why": "fixed", "csrf": "forged"}):
        assert client.post("/dead-letters/replay", data=form).status_code == 403
    assert recorder.changes == []
    # the logout is a POST too
    assert client.post("/logout").status_code == 403


def test_a_token_from_another_session_is_refused(users, recorder):
    a, b = make_client(users), make_client(users)
    login(a, "olga")
    login(b, "olga")
    token_b = csrf_of(b.get("/dead-letters").text)
    res = a.post("/dead-letters/replay", data={"id": "m-1", "why": "fixed", "csrf": token_b})
    assert res.status_code == 403 and recorder.changes == []


def test_a_viewer_reads_but_every_write_is_403(client, recorder):
    login(client, "vera")
    page = client.get("/dead-letters")
    assert page.status_code == 200 and "can look, not replay" in page.text
    token = csrf_of(page.text)
    for path, form in (("/dead-letters/replay", {"id": "m-1", "why": "fixed"}),
                       ("/dead-letters/purge", {"older_than": "30d", "why": "retention"})):
        res = client.post(path, data={**form, "csrf": token})
        assert res.status_code == 403 and "viewer role" in res.text, path
    assert recorder.changes == []


def test_an_operator_replays_and_purges_as_themselves_with_the_reason(client, recorder):
    login(client, "olga")
    token = csrf_of(client.get("/dead-letters").text)
    res = client.post("/dead-letters/replay",
                      data={"csrf": token, "id": ["m-1", "m-2"], "why": "cause fixed"})
    assert res.status_code == 200 and "2 replayed" in res.text
    kind, sel, who, why = recorder.changes[-1]
    assert (kind, sel.ids, who, why) == (AuditKind.REPLAYED, ("m-1", "m-2"), "olga", "cause fixed")
    res = client.post("/dead-letters/purge", data={"csrf": token, "older_than": "30d",
                                                    "service": "eRecept", "why": "retention"})
    kind, sel, who, why = recorder.changes[-1]
    assert res.status_code == 200 and kind is AuditKind.PURGED and who == "olga"
    assert sel.until is not None and sel.service == "eRecept" and not sel.ids
    # a replay without a reason, or a purge without a filter, is refused and not done
    n = len(recorder.changes)
    assert client.post("/dead-letters/replay",
                       data={"csrf": token, "id": "m-1", "why": " "}).status_code == 400
    assert client.post("/dead-letters/purge",
                       data={"csrf": token, "why": "all"}).status_code == 400
    bad_age = client.post("/dead-letters/purge",
                          data={"csrf": token, "older_than": "soon", "why": "x"})
    assert bad_age.status_code == 400 and "older than" in bad_age.text
    assert len(recorder.changes) == n


def test_no_taj_in_any_page_or_json_answer(client):
    login(client, "olga")
    for path in PAGES + APIS:
        res = client.get(path)
        assert res.status_code == 200, path
        assert TAJ not in res.text, path
        assert "******" in res.text or path == "/workers", path


def test_a_session_ends_ttl_after_the_login_however_active(users, recorder, monkeypatch):
    # Given a console whose sessions last 60 s, and a clock the test moves
    now = [1000.0]
    monkeypatch.setattr("eeszt_gw.console.auth.time",
                        type("Clock", (), {"time": staticmethod(lambda: now[0])}))
    c = make_client(users, session_ttl_s=60)
    login(c, "olga")
    # When the user keeps using it
    for step in (20, 20, 19):
        now[0] += step
        assert c.get("/api/overview").status_code == 200
    # Then 61 s after the login the session is over all the same
    now[0] += 2
    assert c.get("/api/overview").status_code == 401
    assert c.get("/").status_code == 302


def test_a_removed_user_is_out_at_the_next_request(client, users):
    login(client, "olga")
    assert client.get("/api/overview").status_code == 200
    users.remove("olga")
    assert client.get("/api/overview").status_code == 401


def test_the_proxy_header_names_the_user_and_still_needs_csrf_and_the_role(users, recorder):
    c = make_client(users, trust_proxy_user_header="X-Remote-User")
    assert c.get("/api/overview").status_code == 401  # no header: nobody
    assert c.get("/", headers={"X-Remote-User": "mallory"}).status_code == 403  # not a user
    page = c.get("/dead-letters", headers={"X-Remote-User": "vera"})
    assert page.status_code == 200 and "vera (viewer)" in page.text
    token = csrf_of(page.text)
    assert c.post("/dead-letters/replay", headers={"X-Remote-User": "vera"},
                  data={"csrf": token, "id": "m-1", "why": "x"}).status_code == 403
    page = c.get("/dead-letters", headers={"X-Remote-User": "olga"})  # another user: new session
    token_olga = csrf_of(page.text)
    assert token_olga != token
    assert c.post("/dead-letters/replay", headers={"X-Remote-User": "olga"},
                  data={"id": "m-1", "why": "x"}).status_code == 403  # no token
    ok = c.post("/dead-letters/replay", headers={"X-Remote-User": "olga"},
                data={"csrf": token_olga, "id": "m-1", "why": "x"})
    assert ok.status_code == 200 and recorder.changes[-1][2] == "olga"


def test_header_text_is_escaped_in_pages(client):
    login(client, "olga")
    page = client.get("/dead-letters").text
    assert "<script>x()" not in page and "&lt;script&gt;x()" in page


def test_the_listing_is_capped_and_filters_reach_the_selector(client, recorder, monkeypatch):
    seen = []
    monkeypatch.setattr(data.ops_dlq, "list_dead_letters",
                        lambda url, tls, sel: seen.append(sel) or [])
    login(client, "vera")
    res = client.get("/api/dead-letters", params={"service": "eRecept", "code": "BIZ-001",
                                                   "reason": "TAJ", "since": "2h"})
    assert res.status_code == 200 and res.json() == []
    sel = seen[-1]
    assert (sel.service, sel.code, sel.reason, sel.limit) == ("eRecept", "BIZ-001", "TAJ", 500)
    assert sel.since is not None and sel.until is None
    bad = client.get("/api/dead-letters", params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and "since" in bad.json()["error"]


def test_pages_carry_a_strict_content_security_policy_and_no_external_asset(client):
    login(client, "olga")
    for path in PAGES + ["/login"]:
        res = client.get(path)
        csp = res.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert not re.search(r'(src|href)="(https?:)?//', res.text), path
        # every input and select has a label
        for field_id in re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', res.text):
            assert f'for="{field_id}"' in res.text, (path, field_id)
        assert not re.search(r'<(?:input|select)(?![^>]*type="hidden")(?![^>]*\bid=)[^>]*>',
                             res.text), path


def test_an_unreachable_broker_is_a_503_naming_it_without_its_password(client, monkeypatch):
    from eeszt_gw.ops.status_broker import BrokerUnreachable

    def down(opts):
        raise BrokerUnreachable("connection refused")

    monkeypatch.setattr(data, "collect", down)
    login(client, "olga")
    page, api = client.get("/"), client.get("/api/overview")
    assert page.status_code == 503 and "connection refused" in page.text
    assert api.status_code == 503 and "connection refused" in api.json()["error"]
    assert "guest:guest" not in page.text + api.text
