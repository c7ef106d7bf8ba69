"""`eeszt-gw bench codepath`: what one request costs in the gateway's own code, without a network.

The throughput scenarios measure whole pipelines with 64 threads per process, where the cost of
the code and the cost of threads contending for the GIL mix. This one separates them: on one
thread, it runs N care events through

- the **gateway**: ``Pipeline.handle`` as a worker process builds it (``workers.runtime``):
  validation into the typed envelope, the token manager, the SOAP call from the contract,
  WS-Security signing with the SAML assertion, the answer parsed for the EESZT id, the retry and
  deadline logic, metrics and three audit events (into a real audit stream, in a fresh vhost
  deleted at the end, unless ``--audit off``);
- the **bare** handle of ``benchmarks/bare.py``: ``json.loads``, the string template, the
  same ``WsseSigner.sign_operation`` and assertion;

with the HTTP POST answered by a canned SOAP answer and the STS by a canned assertion, and
reports CPU µs per event of each (``time.process_time``), interleaved ``--rounds`` times.
``--profile K`` prints the K functions where the gateway spends most (cProfile).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from . import bare
from . import harness as h
from .harness import make_events

_ASSERTION = (b'<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" ID="_bench" '
              b'Version="2.0" IssueInstant="2026-01-01T00:00:00Z"><saml2:Issuer>bench-sts'
              b'</saml2:Issuer><saml2:Subject><saml2:NameID>H100200</saml2:NameID></saml2:Subject>'
              b'</saml2:Assertion>')


def _answer() -> bytes:
    from schemas.soap import COMMON_NS
    from workers.client.soap import SOAP11_NS

    return (f'<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body>'
            f'<tns:esemenyKezdetValasz xmlns:tns="{bare._NS}" xmlns:c="{COMMON_NS}">'
            "<c:eesztId>EV-00000001</c:eesztId><c:version>1</c:version>"
            "<c:storedAt>2026-01-05T08:00:00Z</c:storedAt></tns:esemenyKezdetValasz>"
            "</soap:Body></soap:Envelope>").encode()


def _handlers(pki_dir: Path, audit_url: str | None) -> tuple[Callable[[bytes], None],
                                                               Callable[[bytes], None], Any]:
    from lxml import etree
    from prometheus_client import CollectorRegistry

    from workers.middleware.audit import RabbitAuditLog
    from workers.broker import stub_broker
    from workers.middleware.metrics import MetricsObserver
    from workers.outbox import MemoryOutbox
    from workers.pipeline import Incoming
    from workers.runtime import build_runtime
    from workers.settings import WorkerSettings
    from workers.client.soap import IssuedToken
    from workers.client.transport import HttpResponse

    answer = _answer()
    assertion = etree.fromstring(_ASSERTION)
    now = datetime.now(timezone.utc)
    settings = WorkerSettings(pki_dir=pki_dir, eeszt_url="https://localhost:9", threads=1)
    audit = RabbitAuditLog(audit_url) if audit_url else None
    runtime = build_runtime(settings, broker=stub_broker(), outbox=MemoryOutbox(),
                            observer=MetricsObserver(CollectorRegistry()),
                            **({"audit": audit} if audit else {}))
    client = runtime.client
    client.transport.post = lambda path, body, soap_action="", timeout=None: \
        HttpResponse(200, answer)
    client.issue_token = lambda **_: IssuedToken(assertion=assertion, created=now,
                                                 expires=now + timedelta(hours=8))

    def gateway(body: bytes) -> None:
        outcome = runtime.pipeline.handle(Incoming(body=body, queue=bare.QUEUE))
        if outcome != "accepted":
            raise RuntimeError(f"the gateway answered {outcome!r}, not 'accepted'")

    signer, post = client.signer, client.transport.post

    def bare_handle(body: bytes) -> None:  # benchmarks/bare.py's handle, the POST canned
        resp = post(bare.PATH, bare.signed_request(body, signer, assertion))
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")

    def close() -> None:
        runtime.close()
        if audit is not None:
            audit.close()

    return gateway, bare_handle, close


def _cpu_us(fn: Callable[[bytes], None], bodies: list[bytes]) -> float:
    c0 = time.process_time()
    for body in bodies:
        fn(body)
    return (time.process_time() - c0) / len(bodies) * 1e6


def run(*, n: int = 5000, rounds: int = 3, audit: str = "rabbitmq", profile: int = 0,
        json_out: Path | None = None, png_out: Path | None = None) -> int:
    console = Console(width=110)
    if audit == "rabbitmq":
        if not h.rabbit_ready():
            console.print(f"[red]RabbitMQ is not listening on {h.RABBIT_HOSTPORT} "
                          "(or use --audit off)")
            return 2
        with h.Vhost("codepath") as vhost:  # never the default vhost's audit trail
            return _run(console, n=n, rounds=rounds, audit=audit, audit_url=vhost.url,
                        profile=profile, json_out=json_out, png_out=png_out)
    return _run(console, n=n, rounds=rounds, audit=audit, audit_url=None, profile=profile,
                json_out=json_out, png_out=png_out)


def _run(console: Console, *, n: int, rounds: int, audit: str, audit_url: str | None,
         profile: int, json_out: Path | None, png_out: Path | None) -> int:
    from simulator.pki import init_pki

    bodies = [body for _rk, body, _h, _mid in make_events(n, tag="cp")]
    warm = bodies[: max(1, n // 20)]
    with tempfile.TemporaryDirectory(prefix="eeszt-gw-codepath-") as tmp:
        pki_dir = Path(tmp)
        init_pki(pki_dir, institution_id="H100200", institution_name="Bench Kórház")
        gateway, bare_handle, close = _handlers(pki_dir, audit_url)
        try:
            for fn in (gateway, bare_handle):
                for body in warm:
                    fn(body)
            figures: dict[str, list[float]] = {"gateway": [], "bare": []}
            for r in range(rounds):  # interleaved: the machine's speed drifts
                figures["gateway"].append(_cpu_us(gateway, bodies))
                figures["bare"].append(_cpu_us(bare_handle, bodies))
                console.log(f"round {r + 1} of {rounds}: gateway {figures['gateway'][-1]:,.0f} µs, "
                            f"bare {figures['bare'][-1]:,.0f} µs CPU per event")
            top = ""
            if profile:
                prof = cProfile.Profile()
                prof.enable()
                for body in bodies:
                    gateway(body)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(profile)
                top = out.getvalue()
        finally:
            close()
    med = {k: statistics.median(v) for k, v in figures.items()}
    table = Table(title=f"one request on one thread, HTTP and STS canned: {n:,} care events, "
                        f"median of {rounds} rounds")
    for col in ("code path", "CPU µs/event", "rounds"):
        table.add_column(col, justify="right" if col != "code path" else "left")
    for k in ("gateway", "bare"):
        table.add_row(k, f"{med[k]:,.0f}", " / ".join(f"{x:,.0f}" for x in figures[k]))
    table.add_row("gateway − bare", f"{med['gateway'] - med['bare']:,.0f}", "")
    console.print(table)
    if top:
        console.print(top, markup=False, highlight=False)
    if png_out is not None:
        from .scenarios import _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar(["gateway", "bare"], [med["gateway"], med["bare"]], color=["tab:blue", "tab:orange"])
        ax.set_ylabel("CPU µs per event (one thread)")
        ax.set_title("code path, HTTP and STS canned")
        fig.tight_layout()
        fig.savefig(png_out)
        plt.close(fig)
    if json_out is not None:
        json_out.write_text(json.dumps({"n": n, "rounds": rounds, "audit": audit,
                                        "cpu_us_per_event": figures, "median": med,
                                        "gateway_minus_bare_us": med["gateway"] - med["bare"]},
                                       indent=2))
    return 0
