"""The operator tools survive every message they exist to handle (``tests/hostile.py``).

With the hostile corpus in ``eeszt.dlq`` (5,000 levels deep, 8 MiB, not UTF-8, binary with
terminal escapes, no properties, headers of every wrong type, rich markup, JSON lists and
numbers, a TAJ in body, reason and code), ``status``, ``status --json``, ``dlq list`` (with and
without filters) and ``dlq show`` for each message exit as documented and describe each
message (an id, its size, ``unreadable: <why>``), with every TAJ masked. ``audit`` skips
hostile lines in its stream and still tells a story. The commands run as subprocesses, as an
operator runs them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid

import pika
import pytest

from schemas.wire import DEAD_LETTER_QUEUE
from tests import hostile
from tests.conftest import ROOT
from workers.middleware.audit import AUDIT_QUEUE, RabbitAuditLog, audit_event
from workers.process import declare_topology

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

UNREADABLE = {"deep", "deep-with-reply-to", "invalid-utf8", "binary", "no-properties",
              "markup-in-headers", "json-list", "json-number", "empty"}


def cli(broker_url: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "eeszt_gw.cli", *args, "--broker-url",
                           broker_url], capture_output=True, text=True, cwd=ROOT, timeout=180)
    # never a crash, never a TAJ, never a terminal escape from a message
    assert "Traceback" not in done.stderr, done.stderr
    for out in (done.stdout, done.stderr):
        assert hostile.TAJ not in out and "\x1b" not in out
    return done


def purge_dlq(broker_url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    conn.channel().queue_purge(DEAD_LETTER_QUEUE)
    conn.close()


@pytest.fixture(scope="module")
def corpus_in_dlq(broker_url):
    """The whole corpus in a clean eeszt.dlq of this session's vhost; emptied afterwards."""
    declare_topology(broker_url)
    purge_dlq(broker_url)
    items = hostile.corpus(uuid.uuid4().hex[:6])
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    hostile.publish(conn.channel(), DEAD_LETTER_QUEUE, items)
    conn.close()
    yield items
    purge_dlq(broker_url)


def ref(item: hostile.Hostile) -> str:
    """The id ``dlq`` names a message by: its message id, else a digest of its body."""
    return (item.properties.get("message_id")
            or f"sha256:{hashlib.sha256(item.body).hexdigest()[:16]}")


def listed(broker_url: str, *filters: str) -> list[dict]:
    done = cli(broker_url, "dlq", "list", "--json", *filters)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_dlq_list_describes_every_hostile_message(broker_url, corpus_in_dlq):
    # When the operator lists the dead letters
    rows = listed(broker_url)
    # Then each message is there once, with an id, its size and whether its body is readable
    by_ref = {row["message_id"]: row for row in rows}
    assert len(rows) == len(by_ref) == len(corpus_in_dlq)
    for item in corpus_in_dlq:
        row = by_ref[ref(item)]
        assert row["size"] == len(item.body), item.name
        if item.name in UNREADABLE:
            assert row["body"].startswith("unreadable: "), (item.name, row)
        else:
            assert row["body"] == "ok", (item.name, row)
    named = {item.name: by_ref[ref(item)] for item in corpus_in_dlq}
    assert named["deep"]["body"] == "unreadable: JSON nested deeper than 32 levels"
    assert named["json-number"]["body"] == "unreadable: JSON int, not an object"
    assert named["invalid-utf8"]["body"].startswith("unreadable: not UTF-8")
    # and the table form prints too
    table = cli(broker_url, "dlq", "list")
    assert table.returncode == 0 and f"{len(rows)} matching dead letters" in table.stdout


def test_dlq_list_filters_work_over_hostile_messages(broker_url, corpus_in_dlq):
    ids = lambda rows: {r["message_id"].split("-", 1)[-1] for r in rows}  # noqa: E731
    assert ids(listed(broker_url, "--code", "GW-FAILED")) == {"taj"}
    assert ids(listed(broker_url, "--service", "eRecept")) == {"taj", "markup"}
    assert ids(listed(broker_url, "--reason", "internal")) == {"deep"}
    # only messages with a timestamp a clock can have count for time filters
    assert ids(listed(broker_url, "--since", "1h")) == {"deep", "taj"}
    assert ids(listed(broker_url, "--until", "1h")) == set()
    assert len(listed(broker_url, "--limit", "3")) == 3


def test_dlq_show_prints_each_hostile_message(broker_url, corpus_in_dlq):
    assert {row["message_id"] for row in listed(broker_url)} == set(map(ref, corpus_in_dlq))
    for item in corpus_in_dlq:
        # When the operator shows each one by the id the list gave
        done = cli(broker_url, "dlq", "show", ref(item))
        # Then it prints its size, and why it is unreadable where it is
        assert done.returncode == 0, (item.name, done.stderr)
        assert f"body ({len(item.body)} bytes)" in done.stdout, item.name
        assert ("unreadable:" in done.stdout) == (item.name in UNREADABLE), item.name
        assert len(done.stdout) < 100_000, item.name  # 8 MiB are not poured onto a terminal
    taj = cli(broker_url, "dlq", "show", ref(corpus_in_dlq[10])).stdout
    assert "******" + hostile.TAJ[-3:] in taj and '"taj"' in taj
    # and a dead letter that is not there is exit 1, not a crash
    assert cli(broker_url, "dlq", "show", "no-such-id").returncode == 1


def test_replay_and_purge_dry_runs_go_over_every_hostile_message(broker_url, corpus_in_dlq):
    # When the operator tries a replay of everything, and a purge, without changing anything
    replay = cli(broker_url, "dlq", "replay", "--all-matching", "--why", "test", "--dry-run")
    purge = cli(broker_url, "dlq", "purge", "--all", "--why", "test", "--dry-run")
    # Then only the valid request could be replayed, each other one says why not, and all
    # could be purged
    assert replay.returncode == 1, replay.stderr
    kept = [line for line in replay.stdout.splitlines() if line.startswith("kept ")]
    assert len(kept) == len(corpus_in_dlq) - 1
    assert f"1 replayed, {len(corpus_in_dlq) - 1} kept in {DEAD_LETTER_QUEUE}" in replay.stdout
    assert purge.returncode == 0 and f"{len(corpus_in_dlq)} purged" in purge.stdout
    assert len(listed(broker_url)) == len(corpus_in_dlq)


def test_status_survives_the_corpus_and_says_it_needs_attention(broker_url, corpus_in_dlq):
    # When ops run status, as a table and as JSON
    table = cli(broker_url, "status", "--wait-s", "0.3")
    as_json = cli(broker_url, "status", "--json", "--wait-s", "0.3")
    # Then both exit 1 (dead letters need attention), and count every message
    assert table.returncode == 1, table.stderr
    assert f"dead letters: {len(corpus_in_dlq)}" in table.stdout
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    dead = report["dead_letters"]
    assert dead["total"] == len(corpus_in_dlq) == sum(dead["by_code"].values())
    assert "X-******" + hostile.TAJ[-3:] in dead["by_code"]
    assert dead["by_code"]["[/bold][link=x]"] == 1  # shown as text, not read as markup


def test_audit_skips_hostile_stream_messages_and_masks_the_taj(broker_url):
    # Given an audit stream holding hostile messages between two real events
    run = f"hostile-{uuid.uuid4().hex[:8]}"
    log = RabbitAuditLog(broker_url)
    log.record(audit_event("received", message_id=run, service="eRecept",
                           detail=f"for TAJ {hostile.TAJ}"))
    assert log.flush()
    # (bodies only: RabbitMQ closes the connection on some header types in a stream)
    bodies = [hostile.Hostile(i.name, i.body) for i in hostile.corpus(run, huge=False)]
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    hostile.publish(conn.channel(), AUDIT_QUEUE, bodies)
    conn.close()
    log.record(audit_event("rejected", message_id=run, service="eRecept", detail="GW-VALIDATION"))
    log.close()
    # When the operator asks for the story, as lines and as JSON
    lines = cli(broker_url, "audit", run)
    as_json = cli(broker_url, "audit", run, "--json")
    # Then both events come back, TAJ masked, and nothing else
    assert lines.returncode == 0, lines.stderr
    assert "(2 events)" in lines.stdout and "******" + hostile.TAJ[-3:] in lines.stdout
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["event"] for e in events] == ["received", "rejected"]
