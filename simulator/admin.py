"""The simulator's loopback admin port (plain HTTP, 127.0.0.1 only).

``GET /admin/health``; ``GET /admin/stats``; ``GET|PATCH|PUT /admin/faults``;
``GET|PATCH|PUT /admin/rules`` (``require_two_factor``, ``max_timestamp_lifetime_s``: PATCH
changes the given ones, PUT starts from the start values); ``GET /admin/records`` (filters
``service``, ``key``, ``institution``, ``limit``); ``GET /admin/cards``,
``PATCH /admin/cards/<serial>``; ``POST /admin/reset`` (forgets records and counters, and puts the
rules back to their start values).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from .app import (
    Counters,
    Receive,
    Send,
    _Gone,
    _not_http,
    _read_body,
    _TooLarge,
    json_response,
)
from .faults import FaultConfig
from .rules import Rules
from .store import OwnStore

log = logging.getLogger("eeszt_gw.simulator")


class AdminApp(OwnStore):
    """Loopback-only admin port: stats, run-time faults and rules, records, reset."""

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        client = (scope.get("client") or ("",))[0]
        if client not in ("127.0.0.1", "::1") and not client.startswith("127."):
            await self._json(send, 403, {"error": "the admin endpoint answers loopback only"})
            return
        method, path = scope["method"], scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        try:
            body = await _read_body(receive)
        except (_Gone, _TooLarge):
            return
        if path == "/admin/health":
            await self._json(send, 200, {"status": "ok"})
        elif path == "/admin/stats" and method == "GET":
            stats = self.store.stats()
            stats.update(self.sim.counters.snapshot())
            stats["eid"] = self.sim.eid.counters.snapshot()
            stats["duplicates_mode"] = self.sim.faults.duplicates.value
            stats["faults_config"] = json.loads(self.sim.faults.model_dump_json())
            stats["rules"] = self.sim.rules.as_json()
            await self._json(send, 200, stats)
        elif path == "/admin/faults" and method == "GET":
            await self._json(send, 200, json.loads(self.sim.faults.model_dump_json()))
        elif path == "/admin/faults" and method in ("PUT", "PATCH", "POST"):
            try:
                changes = json.loads(body or b"{}")
                base = self.sim.faults.model_dump() if method != "PUT" else {}
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                config = FaultConfig.model_validate({**base, **changes})
            except ValidationError as exc:
                errors = [{"field": ".".join(map(str, e["loc"])), "reason": e["msg"]}
                          for e in exc.errors()]
                await self._json(send, 422, {"errors": errors})
                return
            except ValueError as exc:
                await self._json(send, 400, {"error": f"body is not JSON: {exc}"})
                return
            self.sim.set_faults(config)
            await self._json(send, 200, json.loads(config.model_dump_json()))
        elif path == "/admin/rules" and method == "GET":
            await self._json(send, 200, self.sim.rules.as_json())
        elif path == "/admin/rules" and method in ("PATCH", "PUT"):
            await self._set_rules(send, body, base=self.sim.rules if method == "PATCH"
                                  else self.sim.start_rules)
        elif path == "/admin/records" and method == "GET":
            rows = self.store.records(service=query.get("service"), key=query.get("key"),
                                      institution=query.get("institution"),
                                      limit=int(query.get("limit", "1000")))
            await self._json(send, 200, {"records": rows})
        elif path == "/admin/cards" and method == "GET":
            await self._json(send, 200, {"cards": [c.as_json() for c in self.sim.eid.cards.entries()]})
        elif path.startswith("/admin/cards/") and method == "PATCH":
            await self._patch_card(send, path.removeprefix("/admin/cards/"), body)
        elif path == "/admin/reset" and method == "POST":
            self.store.reset()
            self.sim.set_rules(self.sim.start_rules)
            self.sim.counters = Counters()
            self.sim.eid.counters.reset()
            self.sim.eid.cards.reset()
            await self._json(send, 200, {"status": "reset"})
        else:
            await self._json(send, 404, {"error": f"no admin route {method} {path}"})

    async def _set_rules(self, send: Send, body: bytes, *, base: Rules) -> None:
        """PATCH /admin/rules changes the given rules; PUT starts from the start values."""
        try:
            changes = json.loads(body or b"{}")
        except ValueError:
            await self._json(send, 422, {"errors": [{"field": "body",
                                                     "reason": "the body is not JSON"}]})
            return
        try:
            rules = base.changed(changes)
        except ValueError as exc:
            field_name, _, reason = str(exc).partition(": ")
            await self._json(send, 422, {"errors": [{"field": field_name, "reason": reason}]})
            return
        self.sim.set_rules(rules)
        log.info("rules changed: %s", rules.as_json())
        await self._json(send, 200, rules.as_json())

    async def _patch_card(self, send: Send, serial: str, body: bytes) -> None:
        """PATCH /admin/cards/<serial> {"activated": bool}: activate or deactivate a card."""
        def refuse(status: int, field_name: str, reason: str):
            return self._json(send, status, {"errors": [{"field": field_name, "reason": reason}]})

        try:
            changes = json.loads(body or b"{}")
        except ValueError:
            await refuse(422, "body", "the body is not JSON")
            return
        if not isinstance(changes, dict):
            await refuse(422, "body", "expected a JSON object")
            return
        extra = sorted(set(changes) - {"activated"})
        if extra:
            await refuse(422, extra[0], "unknown field; only 'activated' can be changed")
            return
        if not isinstance(changes.get("activated"), bool):
            await refuse(422, "activated", "required, true or false")
            return
        entry = self.sim.eid.cards.set_activated(serial, changes["activated"])
        if entry is None:
            await refuse(404, "card_serial", f"no registered card {serial!r}")
            return
        self.store.set_card_state(serial, entry.activated)
        log.info("card %s of %s: activated=%s", serial, entry.user_id, entry.activated)
        await self._json(send, 200, entry.as_json())

    _json = staticmethod(json_response)
