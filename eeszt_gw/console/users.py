"""The console's users: a JSON file of names, roles and argon2 password hashes.

The file is ``{"users": {"NAME": {"role": "viewer"|"operator", "hash": "$argon2id$..."}}}``,
written atomically (a temporary file in the same folder, mode 0600, then renamed) so a reader
never sees half of it. No password is ever stored or logged, only its hash.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("viewer", "operator")
#: a user name: letters, digits and . _ @ - (it is shown in pages and written to the audit trail)
NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()
#: verified against when the user does not exist, so that a wrong name costs as long as a
#: wrong password (no telling which names exist by timing)
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UsersError(Exception):
    """A users file or a user that cannot be used; the message names the file or the field."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "operator"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UsersError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"password: at least {MIN_PASSWORD} characters")
    return password


class UsersFile:
    """The users file at ``path``; re-read when it changes on disk, so a removed user is out
    at their next request."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, dict[str, str]] = {}

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsersError(f"users file {self.path}: {exc.strerror or exc}") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._users
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UsersError(f"users file {self.path}: not readable JSON ({exc})") from None
            users = data.get("users") if isinstance(data, dict) else None
            if not isinstance(users, dict):
                raise UsersError(f"users file {self.path}: no \"users\" object")
            for name, entry in users.items():
                if (not isinstance(entry, dict) or entry.get("role") not in ROLES
                        or not isinstance(entry.get("hash"), str)):
                    raise UsersError(f"users file {self.path}: user {name!r} needs a role "
                                     f"({' or '.join(ROLES)}) and a hash")
            self._stamp, self._users = stamp, users
            return users

    def users(self) -> list[User]:
        return [User(n, e["role"]) for n, e in sorted(self._read().items())]

    def get(self, name: str) -> User | None:
        entry = self._read().get(name)
        return User(name, entry["role"]) if entry else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, if ``password`` is theirs; None otherwise (unknown name or wrong password)."""
        entry = self._read().get(name)
        try:
            _hasher.verify(entry["hash"] if entry else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return User(name, entry["role"]) if entry else None

    def add(self, name: str, role: str, password: str) -> bool:
        """Add or replace ``name``; True when it replaced an existing user."""
        check_name(name)
        if role not in ROLES:
            raise UsersError(f"role {role!r}: one of {', '.join(ROLES)}")
        check_password(password)
        users = dict(self._read())
        existed = name in users
        users[name] = {"role": role, "hash": _hasher.hash(password)}
        self._write(users)
        return existed

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when there was no such user."""
        users = dict(self._read())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"users": users}, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # the half-written file, if it is still there
            raise
        with self._lock:
            self._stamp = None
