"""The simulator's registry of sector users (doctors): passwords, MobilToken secrets, eSZIG cards.

A users file is JSON: ``{"users": [{"user_id": "O10001", "institution": "H100200",
"password": "...", "totp_secret": "BASE32...", "workstation": "WS-01",
"card_serial": "EK12345678", "card_activated": true}]}``. ``card_serial`` is the subject
serialNumber of the doctor's eSZIG card certificate; ``card_activated`` says whether the card was
activated for EESZT (on the sector portal). ``eeszt-gw pki init`` writes one with random secrets
(mode 0600) for the demo doctors, and a virtual card per doctor in ``cards/`` beside it. The
simulator keeps only a hash of each password in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

import pyotp

from schemas.validators import make_taj

from .pki import PkiPaths, issue_card_certificate, write_pem


@dataclass(slots=True)
class User:
    user_id: str
    institution: str
    password_hash: bytes | None
    totp_secret: str | None
    role: str = "doctor"
    workstation: str | None = None
    card_serial: str | None = None
    card_activated: bool = False
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

    def __iter__(self):
        return iter(list(self._users.values()))

    def __len__(self) -> int:
        return len(self._users)

    @classmethod
    def load(cls, path: Path) -> "UserRegistry":
        """Read a users file. Raises ValueError naming the entry and field that is wrong."""
        data = json.loads(Path(path).read_text())
        users = []
        serials: dict[str, str] = {}
        for i, entry in enumerate(data.get("users", [])):
            try:
                user = User(
                    user_id=str(entry["user_id"]),
                    institution=str(entry["institution"]),
                    password_hash=_hash(entry["password"]) if entry.get("password") else None,
                    totp_secret=entry.get("totp_secret"),
                    role=entry.get("role", "doctor"),
                    workstation=entry.get("workstation"),
                    card_serial=entry.get("card_serial") or None,
                    card_activated=entry.get("card_activated", False),
                )
            except KeyError as exc:
                raise ValueError(f"{path}: users[{i}] lacks the field {exc.args[0]!r}") from None
            if user.card_serial is not None and not isinstance(user.card_serial, str):
                raise ValueError(f"{path}: users[{i}].card_serial must be a string")
            if not isinstance(user.card_activated, bool):
                raise ValueError(f"{path}: users[{i}].card_activated must be true or false")
            if user.card_serial:
                if user.card_serial in serials:
                    raise ValueError(f"{path}: users[{i}].card_serial {user.card_serial!r} is "
                                     f"already the card of {serials[user.card_serial]}")
                serials[user.card_serial] = user.user_id
            users.append(user)
        return cls(users)


_FAMILY = ("Kovács", "Szabó", "Tóth", "Nagy", "Horváth", "Varga", "Kiss", "Molnár", "Németh",
           "Farkas", "Balogh", "Papp", "Takács", "Juhász", "Lakatos", "Mészáros", "Oláh", "Simon")
_GIVEN = ("Anna", "Péter", "Katalin", "László", "Éva", "Zoltán", "Mária", "Gábor", "Erzsébet",
          "István", "Judit", "Tamás", "Zsuzsanna", "Attila", "Ildikó", "Balázs", "Krisztina")


def _digits(n: int) -> str:
    return "".join(str(secrets.randbelow(10)) for _ in range(n))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_CREAT: force it
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_virtual_card(cards_dir: Path, *, user_id: str, holder_name: str, card_serial: str,
                       card_ca: PkiPaths) -> dict[str, Any]:
    """Write one virtual eSZIG card: ``<user_id>.key`` (EC P-256, PKCS#8, 0600), ``.pem`` (signed
    by the card CA, serialNumber = ``card_serial``) and ``.json`` (0600: PIN, CAN, PUK and the
    document data). Returns the JSON written. The PIN/CAN/PUK are never logged."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ca_key = load_pem_private_key(card_ca.card_ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(card_ca.card_ca_cert.read_bytes())
    key, cert = issue_card_certificate(ca_key, ca_cert, holder_name=holder_name,
                                       card_serial=card_serial)
    cards_dir = Path(cards_dir)
    cards_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_pem(cards_dir / f"{user_id}.key", key)
    write_pem(cards_dir / f"{user_id}.pem", cert)
    letters = "".join(secrets.choice("ABCDEFGHJKLMNPRSTUVXYZ") for _ in range(2))
    card = {
        "pin": _digits(6),
        "can": _digits(6),
        "puk": _digits(8),
        "document": {
            "name": holder_name,
            "document_id": _digits(6) + letters,
            "taj": make_taj(_digits(8)),
            "card_serial": card_serial,
        },
    }
    _write_private(cards_dir / f"{user_id}.json", json.dumps(card, indent=2, ensure_ascii=False))
    return card


def write_demo_users(path: Path, *, institution: str, count: int = 10,
                     first_stamp: int = 10001, card_ca: PkiPaths | None = None,
                     cards_dir: Path | None = None) -> list[dict[str, Any]]:
    """Write ``count`` demo doctors with random passwords and TOTP secrets (mode 0600).

    With a card CA, every doctor also gets a virtual eSZIG card in ``cards_dir`` (default:
    ``cards/`` beside ``path``; see :func:`write_virtual_card`) and its ``card_serial`` with
    ``card_activated: true`` in the users file. ``card_ca`` defaults to the PKI in the folder of
    ``path`` when its ``card-ca.pem``/``card-ca.key`` exist; without one no cards are written.
    """
    path = Path(path)
    if card_ca is None:
        beside = PkiPaths.in_dir(path.parent)
        if beside.card_ca_cert.is_file() and beside.card_ca_key.is_file():
            card_ca = beside
    users: list[dict[str, Any]] = [
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
    if card_ca is not None:
        cards_dir = Path(cards_dir) if cards_dir is not None else path.parent / "cards"
        serials: set[str] = set()
        for user in users:
            serial = f"EK{_digits(8)}"
            while serial in serials:
                serial = f"EK{_digits(8)}"
            serials.add(serial)
            name = f"Dr. {secrets.choice(_FAMILY)} {secrets.choice(_GIVEN)}"
            write_virtual_card(cards_dir, user_id=user["user_id"], holder_name=name,
                               card_serial=serial, card_ca=card_ca)
            user["card_serial"] = serial
            user["card_activated"] = True
    _write_private(path, json.dumps({"users": users}, indent=2))
    return users
