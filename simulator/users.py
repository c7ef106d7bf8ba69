"""The simulator's registry of sector users (doctors): passwords and MobilToken secrets.

A users file is JSON: ``{"users": [{"user_id": "O10001", "institution": "H100200",
"password": "...", "totp_secret": "BASE32...", "workstation": "WS-01"}]}``. ``eeszt-gw pki init``
writes one with random secrets (mode 0600) for the demo doctors. The simulator keeps only a hash
of each password in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pyotp


@dataclass(slots=True)
class User:
    user_id: str
    institution: str
    password_hash: bytes | None
    totp_secret: str | None
    role: str = "doctor"
    workstation: str | None = None
    _used_codes: dict[str, int] = field(default_factory=dict)

    def check_password(self, password: str) -> bool:
        if self.password_hash is None:
            return False
        return hmac.compare_digest(self.password_hash, _hash(password))

    def check_totp(self, code: str, *, at: float) -> bool:
        """RFC 6238 with one step of drift either way; a code is accepted only once."""
        if not self.totp_secret:
            return False
        totp = pyotp.TOTP(self.totp_secret)
        if not totp.verify(code, for_time=at, valid_window=1):
            return False
        step = int(at) // totp.interval
        # RFC 6238 5.2: the verifier must not accept the same code twice.
        if self._used_codes.get(code, -10) >= step - 2:
            return False
        self._used_codes = {c: s for c, s in self._used_codes.items() if s >= step - 2}
        self._used_codes[code] = step
        return True


def _hash(password: str) -> bytes:
    return hashlib.sha256(b"eeszt-sim:" + password.encode()).digest()


class UserRegistry:
    def __init__(self, users: list[User] | None = None) -> None:
        self._users = {u.user_id: u for u in users or []}

    def get(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    def __len__(self) -> int:
        return len(self._users)

    @classmethod
    def load(cls, path: Path) -> "UserRegistry":
        """Read a users file. Raises ValueError naming the entry and field that is wrong."""
        data = json.loads(Path(path).read_text())
        users = []
        for i, entry in enumerate(data.get("users", [])):
            try:
                users.append(
                    User(
                        user_id=str(entry["user_id"]),
                        institution=str(entry["institution"]),
                        password_hash=_hash(entry["password"]) if entry.get("password") else None,
                        totp_secret=entry.get("totp_secret"),
                        role=entry.get("role", "doctor"),
                        workstation=entry.get("workstation"),
                    )
                )
            except KeyError as exc:
                raise ValueError(f"{path}: users[{i}] lacks the field {exc.args[0]!r}") from None
        return cls(users)


def write_demo_users(path: Path, *, institution: str, count: int = 10,
                     first_stamp: int = 10001) -> list[dict[str, str]]:
    """Write ``count`` demo doctors with random passwords and TOTP secrets (mode 0600)."""
    users = [
        {
            "user_id": f"O{first_stamp + i:05d}",
            "institution": institution,
            "role": "doctor",
            "workstation": f"WS-{i + 1:02d}",
            "password": secrets.token_urlsafe(12),
            "totp_secret": pyotp.random_base32(),
        }
        for i in range(count)
    ]
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"users": users}, fh, indent=2)
    return users
