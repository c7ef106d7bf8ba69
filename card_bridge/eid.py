"""The eID server client: card certificate + signature over the nonce in, rID package out."""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError

from .errors import CardError, CardNotActivated, EidUnreachable


@dataclass(frozen=True, slots=True)
class EidPackage:
    """What the bridge needs from EESZT's eID request package (opaque otherwise)."""

    raw: str
    nonce: bytes
    user_id: str

    @classmethod
    def parse(cls, raw: str) -> "EidPackage":
        """``base64url(JSON) "." base64url(signature)``; raises ValueError if malformed."""
        head = raw.split(".", 1)[0]
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        return cls(raw=raw, nonce=base64.b64decode(data["nonce"]), user_id=str(data["user_id"]))


class EidServer:
    """HTTPS (server-authenticated) with a timeout on every call."""

    def __init__(self, *, url: str, ca_file: Path | None, timeout_s: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.url = url.rstrip("/")
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._pool = urllib3.PoolManager(ssl_context=ctx, retries=False, timeout=self.timeout)

    def authenticate(self, *, package: str, certificate_der: bytes, signature: bytes) -> str:
        """The rID package. Raises CardNotActivated, EidUnreachable or CardError."""
        body = json.dumps({"package": package,
                           "card_certificate": base64.b64encode(certificate_der).decode(),
                           "signature": base64.b64encode(signature).decode()}).encode()
        try:
            resp = self._pool.request("POST", f"{self.url}/eid/authenticate", body=body,
                                      headers={"Content-Type": "application/json"})
        except HTTPError as exc:
            raise EidUnreachable(f"the eID server at {self.url} did not answer: {exc}") from None
        try:
            answer = json.loads(resp.data or b"{}")
        except ValueError:
            answer = {}
        if resp.status == 200 and isinstance(answer.get("rid"), str):
            return answer["rid"]
        if resp.status >= 500:
            raise EidUnreachable(f"the eID server failed (HTTP {resp.status})")
        code = answer.get("code", f"http_{resp.status}")
        message = answer.get("message", "")
        if code in ("card_not_activated", "card_not_registered"):
            raise CardNotActivated(f"{code}: {message}")
        raise CardError(f"the eID server refused the card: {code}: {message}")
