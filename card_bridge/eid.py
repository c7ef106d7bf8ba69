"""The eID server client: the card's certificate and signature over the nonce (or the doctor's
MobilToken code) in, an rID package out. The code goes from the prompt to the eID server over
HTTPS and nowhere else."""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import urllib3
from urllib3.exceptions import HTTPError

from .errors import CardError, CardNotActivated, EidUnreachable, MobilTokenNotEnrolled, WrongCode


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
        return self._post("/eid/authenticate", {
            "package": package, "card_certificate": base64.b64encode(certificate_der).decode(),
            "signature": base64.b64encode(signature).decode()})

    def mobiltoken(self, *, package: str, otp: str) -> str:
        """The rID package for a MobilToken login. Raises WrongCode, MobilTokenNotEnrolled,
        EidUnreachable or CardError."""
        return self._post("/eid/mobiltoken", {"package": package, "otp": otp})

    def _post(self, path: str, payload: dict[str, str]) -> str:
        body = json.dumps(payload).encode()
        try:
            resp = self._pool.request("POST", f"{self.url}{path}", body=body,
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
        if code == "otp_invalid":
            raise WrongCode(f"{code}: {message}")
        if code == "mobiltoken_not_enrolled":
            raise MobilTokenNotEnrolled(f"{code}: {message}")
        raise CardError(f"the eID server refused the login: {code}: {message}")
