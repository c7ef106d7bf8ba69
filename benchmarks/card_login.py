"""``eeszt-gw bench card-login``: how long a card login takes, without the doctor's typing.

Through the real stack: pyscard → pcscd → vpcd → the virtual eSZIG card, and the simulator's
eID server over HTTPS. Each round hands the bridge a fresh, signed challenge with a fresh eID
package (fetching the package is the worker's part and is not timed) and measures the bridge
from taking the challenge to holding the rID: card connect, SELECT, VERIFY, INTERNAL
AUTHENTICATE, reading the certificate, and the eID server call. The time the prompt takes is
subtracted (the scripted doctor answers at once; a real one types). Beside it: the round trip of
one APDU through pcscd, which bounds how fast the card part can be.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from card_bridge.card import PcscReader
from card_bridge.challenge import ChallengeVerifier, load_pinned_key
from card_bridge.daemon import Bridge
from card_bridge.eid import EidServer
from card_bridge.login import LocalCardClient
from schemas.card import CardChallenge
from simulator.card.files import load_card
from simulator.card.vpcd import VpcdCard
from simulator.pki import init_pki
from simulator.server import build_simulator, eid_server, server_ssl_context
from simulator.settings import SimulatorSettings
from simulator.users import write_demo_users
from workers.client.client import ClientFiles, EesztClient
from workers.logins.coordinator import sign_challenge
from workers.runtime import load_challenge_key

READER = "Virtual PCD 00 00"


class TimedPrompt:
    """Answers the PIN at once and records how long each prompt took (to subtract it)."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.spent = 0.0

    def ask(self, kind, info, *, tries_left, timeout_s):
        t0 = time.perf_counter()
        answer = self.pin
        self.spent += time.perf_counter() - t0
        return answer


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _pcscd_ready() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 35963), timeout=1):
            return True
    except OSError:
        return False


def run(*, n: int = 30, apdus: int = 500, json_out: Path | None = None) -> int:
    console = Console()
    if not _pcscd_ready():
        console.print("[red]pcscd with the vpcd driver is not listening on 127.0.0.1:35963; run "
                      "`.ci/ensure-pcscd` (as root) first")
        return 2
    import uvicorn

    work = Path(tempfile.mkdtemp(prefix="eeszt-gw-bench-card-"))
    try:
        pki_dir = work / "pki"
        pki = init_pki(pki_dir)
        users = write_demo_users(pki_dir / "users.json", institution="H100200", count=1)
        user = users[0]["user_id"]
        settings = SimulatorSettings(pki_dir=pki_dir, port=_port(), eid_port=_port(),
                                     db=work / "sim.sqlite", log_level="warning")
        sim = build_simulator(settings)
        config = uvicorn.Config(sim, host="127.0.0.1", port=settings.port, log_level="warning",
                                access_log=False, lifespan="off")
        config.load()
        config.ssl = server_ssl_context(sim.pki)
        servers = [uvicorn.Server(config), eid_server(sim, settings)]
        for server in servers:
            threading.Thread(target=server.run, daemon=True).start()
        while not all(s.started for s in servers):
            time.sleep(0.02)
        client = EesztClient(base_url=f"https://localhost:{settings.port}",
                             files=ClientFiles.from_pki_dir(pki_dir))
        key = load_challenge_key(pki.challenge_key)
        pin = json.loads((pki_dir / "cards" / f"{user}.json").read_text())["pin"]
        applet = load_card(pki_dir, user)
        counted = {"apdus": 0}
        original = applet.process

        def counting(apdu: bytes) -> bytes:
            counted["apdus"] += 1
            return original(apdu)

        applet.process = counting
        card = VpcdCard(applet)
        card.start()
        if not card.wait_connected(10):
            console.print("[red]pcscd did not take the virtual card")
            return 1
        time.sleep(0.5)  # pcscd's presence poll
        eid = EidServer(url=f"https://localhost:{settings.eid_port}", ca_file=pki.server_ca_cert)
        prompt = TimedPrompt(pin)
        bridge = Bridge(workstation="WS-BENCH",
                        verifier=ChallengeVerifier(key=load_pinned_key(pki.challenge_cert),
                                                   workstation="WS-BENCH"),
                        card_client=LocalCardClient(reader=PcscReader(READER), eid=eid), prompt=prompt)
        login_ms, eid_ms = [], []
        orig_auth = eid.authenticate

        def timed_auth(**kw):
            t0 = time.perf_counter()
            try:
                return orig_auth(**kw)
            finally:
                eid_ms.append((time.perf_counter() - t0) * 1000)

        eid.authenticate = timed_auth
        apdus_per_login = []
        for _ in range(n + 2):  # two warm-up rounds: TLS session, imports
            package, _ = client.request_eid_package(user_id=user, workstation="WS-BENCH")
            now = datetime.now(timezone.utc)
            challenge = sign_challenge(key, CardChallenge(
                challenge_id=uuid.uuid4(), user_id=user,
                workstation="WS-BENCH", institution="H100200", purpose="benchmark",
                eid_package=package, created_at=now, expires_at=now + timedelta(minutes=2)))
            body = challenge.model_dump_json().encode()
            prompt.spent, before = 0.0, counted["apdus"]
            t0 = time.perf_counter()
            answer = bridge.handle(body)
            elapsed = time.perf_counter() - t0 - prompt.spent
            if answer is None or answer.outcome != "rid":
                console.print(f"[red]login failed: {answer}")
                return 1
            login_ms.append(elapsed * 1000)
            apdus_per_login.append(counted["apdus"] - before)
        login_ms, eid_ms = login_ms[2:], eid_ms[2:]
        rtt_us = _apdu_rtt(apdus)
        card.stop()
        client.close()
        for server in servers:
            server.should_exit = True
        table = Table(title=f"card login, challenge → rID, {n} logins (PIN typing excluded)")
        for col in ("measure", "median", "p95", "unit"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        table.add_row("challenge → rID answer", f"{statistics.median(login_ms):.1f}",
                      f"{_pct(login_ms, 0.95):.1f}", "ms")
        table.add_row("  of which eID server call (HTTPS)", f"{statistics.median(eid_ms):.1f}",
                      f"{_pct(eid_ms, 0.95):.1f}", "ms")
        table.add_row(f"APDU round trip through pcscd ({apdus} APDUs)",
                      f"{statistics.median(rtt_us):.0f}", f"{_pct(rtt_us, 0.95):.0f}", "µs")
        table.add_row("APDUs per login", f"{statistics.median(apdus_per_login):.0f}", "", "")
        console.print(table)
        if json_out:
            json_out.write_text(json.dumps({
                "logins": n, "login_ms": {"median": statistics.median(login_ms), "p95": _pct(login_ms, 0.95)},
                "eid_ms": {"median": statistics.median(eid_ms), "p95": _pct(eid_ms, 0.95)},
                "apdu_rtt_us": {"median": statistics.median(rtt_us), "p95": _pct(rtt_us, 0.95)},
                "apdus_per_login": statistics.median(apdus_per_login)}, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _apdu_rtt(count: int) -> list[float]:
    from smartcard.CardRequest import CardRequest
    from smartcard.System import readers

    service = CardRequest(timeout=5, readers=[r for r in readers() if str(r) == READER]).waitforcard()
    service.connection.connect()
    select = [0x00, 0xA4, 0x04, 0x00, 0x0A, *bytes.fromhex("A000000777455A494701")]
    out = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            service.connection.transmit(select)
            out.append((time.perf_counter() - t0) * 1e6)
    finally:
        service.connection.disconnect()
    return out
