"""The main scenario (publish, process, reply) through the commands a user types, on RabbitMQ and the simulator.

`eeszt-gw generate` writes 2,000 valid requests and 50 that EESZT or the gateway refuses;
`eeszt-gw publish` sends them; `eeszt-gw worker` processes them; `eeszt-gw replies` follows
the HIS's replies. The simulator runs in naive mode, so a request sent twice would be stored
twice and show up in its stats.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pika
import pytest

from schemas.wire import BATCH_QUEUE, INTERACTIVE_QUEUE
from tests.conftest import ROOT, forget_logins, start_workers

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
KEY = "his.e2e"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_generate_publish_process_reply(broker_url, simulator, tmp_path):
    simulator.reset(duplicates="naive")
    # Given a HIS reply queue bound before anything is published,
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.queue_declare(f"{KEY}.replies", durable=True)
    from workers.process import declare_topology

    declare_topology(broker_url)
    ch.queue_bind(f"{KEY}.replies", "eeszt.replies", routing_key=KEY)
    # (and nothing an earlier test on this vhost left behind: a request waiting for a login
    # there would come back to the work queue and be counted here)
    forget_logins(broker_url)
    for queue in (INTERACTIVE_QUEUE, BATCH_QUEUE):
        ch.queue_purge(queue)
    conn.close()
    # and a generated file of 2,000 valid and 50 refused requests,
    jsonl = tmp_path / "requests.jsonl"
    gen = cli("generate", "--prescriptions", "600", "--referrals", "300", "--profiles", "100",
              "--events", "400", "--documents", "200", "--invalid", "50", "--reply-to", KEY,
              "--seed", "3", "--out", str(jsonl))
    assert gen.returncode == 0, gen.stderr
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 2050
    # When it is published and the workers run,
    pub = cli("publish", str(jsonl), "--broker-url", broker_url, "--no-progress")
    assert pub.returncode == 0, pub.stdout + pub.stderr
    pool = start_workers(broker_url=broker_url, sim=simulator, workdir=tmp_path, processes=2,
                         threads=16)
    try:
        rep = cli("replies", "--broker-url", broker_url, "--reply-routing-key", KEY,
                  "--count", "2050", "--timeout", "60", "--json", timeout=600)
    finally:
        pool.stop()
    replies = [json.loads(line) for line in rep.stdout.splitlines() if line.strip()]
    finals = {r["message_id"]: r for r in replies if r["kind"] != "status"}
    kinds = Counter(r["kind"] for r in finals.values())
    # Then the HIS has 2,000 accepted and 50 rejected replies, each rejection naming a field,
    assert kinds == {"accepted": 2000, "rejected": 50}, (kinds, rep.stderr[-2000:])
    rejected = [r for r in finals.values() if r["kind"] == "rejected"]
    assert all(r["field"] for r in rejected)
    assert {r["field"] for r in rejected} <= {"acting", "prescriptionId"}
    # and the simulator holds exactly 2,000 records, none stored twice,
    stats = simulator.stats()
    assert stats["total_records"] == 2000 and stats["repeated_keys"] == 0
    # and no rejected request reached the simulator more than once. (A request that waited
    # for its doctor's login at the workstation asks EESZT first when it is released: a query
    # under its key, so such keys, and only those, reach EESZT twice.)
    waited = {r["message_id"] for r in replies
              if r["kind"] == "status" and r.get("state") == "waiting_for_login"}
    waited_rejected = waited & {r["message_id"] for r in rejected}
    assert stats["attempts"]["rejected_keys_received_more_than_once"] <= len(waited_rejected)
    assert stats["attempts"]["keys_received_more_than_once"] <= len(waited)
