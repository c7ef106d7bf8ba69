"""The simulated eID server's ASGI application (its own HTTPS listener), beside the EESZT
service port of :mod:`simulator.app`, whose request helpers it reuses.
"""

from __future__ import annotations

import json
from typing import Any

from .app import Receive, Send, _Gone, _not_http, _read_body, _TooLarge, json_response
from .eid import EidError
from .store import OwnStore

MAX_EID_BODY = 64 * 1024


class EidServerApp(OwnStore):
    """The simulated eID server (its own HTTPS listener, server-auth TLS only: the eSzemélyi
    client on a workstation has no access certificate).

    ``POST /eid/authenticate`` JSON {"package", "card_certificate" (base64 DER), "signature"
    (base64 DER ECDSA-SHA256 over the raw nonce bytes)} -> 200 {"rid"} or 400/403 {"code",
    "message"} (codes: :data:`simulator.eid.EID_ERROR_STATUS`). ``POST /eid/mobiltoken`` JSON
    {"package", "otp"} (the doctor's MobilToken code) -> the same. ``GET /eid/health`` -> 200.
    """

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path == "/eid/health" and method == "GET":
            await json_response(send, 200, {"status": "ok"})
            return
        if path not in ("/eid/authenticate", "/eid/mobiltoken"):
            await self._error(send, 404, "not_found", f"no eID route {method} {path}")
            return
        if method != "POST":
            await self._error(send, 405, "method_not_allowed", "use POST")
            return
        try:
            body = await _read_body(receive, MAX_EID_BODY)
        except _Gone:
            return
        except _TooLarge:
            await self._error(send, 413, "bad_request", f"body larger than {MAX_EID_BODY} bytes")
            return
        self.sim.counters.requests["eid"] += 1
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.sim.eid.counters.auth_failed("bad_request")
            await self._error(send, 400, "bad_request", "the body must be a JSON object")
            return
        try:
            if path == "/eid/mobiltoken":
                rid, _ = self.sim.eid.mobiltoken(package=data.get("package"), otp=data.get("otp"),
                                                 used=self.store)
            else:
                rid, _ = self.sim.eid.authenticate(package=data.get("package"),
                                                   card_certificate=data.get("card_certificate"),
                                                   signature=data.get("signature"), used=self.store)
        except EidError as exc:
            await json_response(send, exc.http_status, exc.as_json())
            return
        await json_response(send, 200, {"rid": rid})

    @staticmethod
    async def _error(send: Send, status: int, code: str, message: str) -> None:
        await json_response(send, status, {"code": code, "message": message})
