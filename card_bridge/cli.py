"""The ``card-bridge`` command: one workstation's bridge, wired from its settings."""

from __future__ import annotations

import argparse
import json  # noqa: F401
import logging  # noqa: F401
import sys
from pathlib import Path  # noqa: F401

from eeszt_gw._legacy_flags import ENV_NOTE, _add, _add_broker_tls, _broker_config_error, _given  # noqa: F401


# --- card bridge ----------------------------------------------------------------------------------
def _card_bridge(ns: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import CollectorRegistry
    from pydantic import ValidationError

    from card_bridge.card import PcscReader
    from card_bridge.challenge import ChallengeVerifier, load_pinned_key
    from card_bridge.daemon import Bridge, BridgeService, check
    from card_bridge.eid import EidServer
    from card_bridge.login import LocalCardClient, MobilTokenClient
    from card_bridge.metrics import BridgeMetrics
    from card_bridge.presence import PresenceMonitor
    from card_bridge.prompt import TerminalPrompt
    from card_bridge.settings import BridgeSettings
    from workers.middleware.metrics import serve_quietly

    try:
        settings = BridgeSettings(**_given(ns, "check"))
    except ValidationError as exc:
        for e in exc.errors():
            print(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    if getattr(ns, "check", False):
        return check(settings.heartbeat_dir, settings.workstation)
    from eeszt_gw.amqp import BrokerConfigError

    try:
        broker_tls = settings.broker_tls()
        problem = _broker_config_error(settings.broker_url, broker_tls)
    except BrokerConfigError as exc:
        problem = str(exc)
    if problem:
        print(f"error: broker: {problem}", file=sys.stderr)
        return 2
    try:
        key = load_pinned_key(settings.challenge_key)
    except (OSError, ValueError) as exc:
        print(f"error: challenge_key: {exc}", file=sys.stderr)
        return 2
    eid = EidServer(url=settings.eid_url, ca_file=settings.eid_ca, timeout_s=settings.eid_timeout_s)
    if settings.login_method == "mobiltoken":
        client = MobilTokenClient(eid=eid, prompt_timeout_s=settings.prompt_timeout_s)
    else:
        client = LocalCardClient(reader=PcscReader(settings.reader), eid=eid,
                                 card_wait_s=settings.card_wait_s,
                                 prompt_timeout_s=settings.prompt_timeout_s)
    presence = PresenceMonitor(reader=settings.reader).start()
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry, workstation=settings.workstation, presence=presence)
    bridge = Bridge(workstation=settings.workstation, verifier=ChallengeVerifier(
        key=key, workstation=settings.workstation, used_file=settings.used_challenges_file()),
        card_client=client, prompt=TerminalPrompt(), prompt_timeout_s=settings.prompt_timeout_s,
        metrics=metrics, method=settings.login_method)
    server = serve_quietly(settings.metrics_port, registry, what="card bridge")
    service = BridgeService(bridge=bridge, url=settings.broker_url, tls=broker_tls,
                            heartbeat_dir=settings.heartbeat_dir, presence=presence)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop_event.set())
    t = threading.Thread(target=service.run, name="bridge", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    presence.stop()
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0


def _add_card_bridge(sub) -> None:
    p = sub.add_parser(
        "card-bridge", help="the workstation daemon: eSZIG card and MobilToken logins",
        description=(
            "Run the card bridge of one workstation. It consumes only this workstation's queue "
            "(eeszt.card.<WS>), accepts only challenges signed by the gateway's pinned challenge "
            "key, shows who asks and why, and logs the doctor in the way this workstation is set "
            "up (--login-method): the PIN, and the eSZIG card through PC/SC; or the code of the "
            "MobilToken app, posted straight to the eID server. It answers on the broker with "
            "the eID server's rID: the PIN and the code never leave this process except to the "
            "card and the eID server. " + ENV_NOTE))
    E = "EESZT_BRIDGE_"
    _add(p, "--workstation", E + "WORKSTATION", "this workstation's id, as HIS requests name it (required)")
    _add(p, "--broker-url", E + "BROKER_URL", "RabbitMQ URL; in production a user that may read "
         "only this workstation's queue; amqps:// for TLS "
         "(default: amqp://guest:guest@127.0.0.1:5672/%%2F)")
    _add_broker_tls(p, E)
    _add(p, "--challenge-key", E + "CHALLENGE_KEY", "the gateway's challenge public key or "
         "certificate, pinned (default: pki/challenge.pem)")
    _add(p, "--eid-url", E + "EID_URL", "the eID server (default: https://localhost:8445)")
    _add(p, "--eid-ca", E + "EID_CA", "CA file of the eID server's certificate (default: pki/server-ca.pem)")
    _add(p, "--login-method", E + "LOGIN_METHOD", "how doctors log in here: eszig (card and "
         "PIN) or mobiltoken (the code of the MobilToken app) (default: eszig)",
         choices=("eszig", "mobiltoken"))
    _add(p, "--reader", E + "READER", "use the first PC/SC reader whose name contains this (default: the first)")
    _add(p, "--card-wait-s", E + "CARD_WAIT_S", "how long to wait for a card (default: 30)", type=float)
    _add(p, "--prompt-timeout-s", E + "PROMPT_TIMEOUT_S", "how long to wait for the PIN (default: 120)", type=float)
    _add(p, "--metrics-port", E + "METRICS_PORT", "Prometheus /metrics port on 127.0.0.1: logins "
         "by outcome, card present, pcscd up; 0 disables it (default: 12099)", type=int)
    _add(p, "--heartbeat-dir", E + "HEARTBEAT_DIR", "heartbeat for --check (default: /tmp/eeszt-gw-bridge)")
    _add(p, "--used-challenges", E + "USED_CHALLENGES", "file of the challenge ids already used, "
         "kept until they expire so that a replay is refused after a restart too (default: "
         "HEARTBEAT_DIR/used-challenges-WORKSTATION.json)")
    _add(p, "--log-level", E + "LOG_LEVEL", "debug, info, warning or error (default: info)")
    p.add_argument("--check", action="store_true",
                   help="health probe: exit 0 if this workstation's bridge beat within 30 s and "
                        "is connected to the broker")
    p.set_defaults(func=_card_bridge)


def register(sub) -> None:
    _add_card_bridge(sub)
