"""The ``card-bridge`` command: its flags come from :class:`BridgeSettings`; the bridge itself is
wired in :mod:`card_bridge.main`."""

from __future__ import annotations

import argparse


def _card_bridge(settings, ns: argparse.Namespace) -> int:
    if ns.check:
        from card_bridge.daemon import check

        return check(settings.heartbeat_dir, settings.workstation)
    from card_bridge.main import run

    return run(settings)


def register(sub) -> None:
    from card_bridge.settings import BridgeSettings
    from eeszt_gw.config import add_command

    p = add_command(
        sub, "card-bridge", BridgeSettings, _card_bridge,
        help="the workstation daemon: eSZIG card and MobilToken logins",
        description=(
            "Run the card bridge of one workstation. It consumes only this workstation's queue "
            "(eeszt.card.<WS>), accepts only challenges signed by the gateway's pinned challenge "
            "key, shows who asks and why, and logs the doctor in the way this workstation is set "
            "up (--login-method): the PIN, and the eSZIG card through PC/SC; or the code of the "
            "MobilToken app, posted straight to the eID server. It answers on the broker with "
            "the eID server's rID: the PIN and the code never leave this process except to the "
            "card and the eID server."))
    p.add_argument("--check", action="store_true",
                   help="health probe: exit 0 if this workstation's bridge beat within 30 s and "
                        "is connected to the broker")
