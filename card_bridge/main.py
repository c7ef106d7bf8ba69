"""One workstation's card bridge, wired from its settings: the card or MobilToken client, the
card presence monitor, /metrics, the broker service on its own thread, and the signals that stop
it. ``eeszt-gw card-bridge`` (card_bridge/cli.py) parses the flags and calls :func:`run`."""

from __future__ import annotations

import logging
import signal
import threading

from eeszt_gw.config import UsageError

from .settings import BridgeSettings


def run(settings: BridgeSettings) -> int:
    """Run the bridge until SIGTERM or SIGINT; 0 then. Raises UsageError for a bad setting,
    before anything starts."""
    from prometheus_client import CollectorRegistry

    from workers.middleware.metrics import serve_quietly

    from .card import PcscReader
    from .challenge import ChallengeVerifier, load_pinned_key
    from .daemon import Bridge, BridgeService
    from .eid import EidServer
    from .login import LocalCardClient, MobilTokenClient
    from .metrics import BridgeMetrics
    from .presence import PresenceMonitor
    from .prompt import TerminalPrompt

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    broker_tls = settings.checked_broker_tls()
    try:
        key = load_pinned_key(settings.pinned_challenge_key)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--pinned-challenge-key: {exc}") from None
    try:
        eid = EidServer(url=settings.eid_url, ca_file=settings.eid_ca,
                        timeout_s=settings.eid_timeout_s)
    except OSError as exc:  # ssl.SSLError too: the CA file is missing or not PEM
        raise UsageError(f"--eid-ca: {exc.strerror or exc}: {settings.eid_ca}") from None
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
