"""The files that make up one virtual eSZIG card, and loading them into an :class:`EszigApplet`.

One card is three files named after the user id, in a ``cards/`` folder (normally inside the
test PKI directory that ``eeszt-gw pki init`` writes)::

    cards/<user_id>.key    the card's P-256 private key (PKCS#8 PEM, unencrypted, mode 0600)
    cards/<user_id>.pem    its X.509 certificate (PEM), issued by pki/card-ca
    cards/<user_id>.json   {"pin": "123456", "can": "654321", "puk": "12345678",
                            "document": {"name": ..., "document_id": ..., "taj": ...,
                                         "card_serial": ...}}

**Test material only**: the PIN, CAN and PUK are stored in clear text. Error messages name the
file and the field, never a value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from simulator.card.applet import EszigApplet
from simulator.certs import write_bytes, write_pem

__all__ = ["VirtualCardFiles", "load_card", "write_card"]

_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class VirtualCardFiles:
    """Where the three files of one card live. Building one does no I/O."""

    key: Path
    certificate: Path
    secrets: Path

    @classmethod
    def in_dir(cls, directory: Path | str, user_id: str) -> VirtualCardFiles:
        """The files of ``user_id``'s card.

        ``directory`` is either the folder that holds ``cards/`` (the PKI directory) or the
        ``cards/`` folder itself: ``directory/cards/<user_id>.json`` wins when it exists.
        Raises :class:`ValueError` for a user id that could escape the folder.
        """
        d = Path(directory)
        if (d / "cards" / f"{user_id}.json").exists() or not (d / f"{user_id}.json").exists():
            d = d / "cards"
        return cls.at(d, user_id)

    @classmethod
    def at(cls, cards_dir: Path | str, user_id: str) -> VirtualCardFiles:
        """The files of ``user_id``'s card directly inside ``cards_dir``."""
        if not _USER_ID.match(user_id):
            raise ValueError(f"not a valid user id for a card file name: {user_id!r}")
        d = Path(cards_dir)
        return cls(d / f"{user_id}.key", d / f"{user_id}.pem", d / f"{user_id}.json")

    def exists(self) -> bool:
        return self.key.is_file() and self.certificate.is_file() and self.secrets.is_file()

    def load(self) -> EszigApplet:
        """Read the three files into a fresh applet (PIN counters full).

        Raises :class:`FileNotFoundError` naming a missing file and :class:`ValueError` for a
        malformed one (wrong key type, certificate not matching the key, bad PIN/CAN/PUK).
        """
        for path in (self.key, self.certificate, self.secrets):
            if not path.is_file():
                raise FileNotFoundError(f"virtual card file missing: {path}")
        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key}: not an EC private key")
        cert = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        try:
            data = json.loads(self.secrets.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.secrets}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.secrets}: expected a JSON object")
        for field in ("pin", "can", "puk"):
            if not isinstance(data.get(field), str):
                raise ValueError(f"{self.secrets}: field {field!r} missing or not a string")
        document = data.get("document", {})
        if not isinstance(document, dict):
            raise ValueError(f"{self.secrets}: field 'document' must be an object")
        try:
            return EszigApplet(
                key=key,
                certificate_der=cert.public_bytes(serialization.Encoding.DER),
                document=document,
                pin=data["pin"],
                can=data["can"],
                puk=data["puk"],
            )
        except ValueError as exc:
            raise ValueError(f"{self.secrets.parent}/{self.secrets.stem}.*: {exc}") from None


def load_card(directory: Path | str, user_id: str) -> EszigApplet:
    """The applet of ``user_id``'s virtual card, read from ``directory`` (see
    :meth:`VirtualCardFiles.in_dir`). Raises :class:`FileNotFoundError` or :class:`ValueError`."""
    return VirtualCardFiles.in_dir(directory, user_id).load()


def write_card(
    cards_dir: Path | str,
    user_id: str,
    *,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    pin: str,
    can: str,
    puk: str,
    document: dict[str, Any],
) -> VirtualCardFiles:
    """Write one card's three files into ``cards_dir`` (created if missing).

    The key and the JSON (which holds the PIN, CAN and PUK) are written with mode 0600, each
    file atomically. The values are checked first by building the applet, so a bad PIN or a
    certificate that does not match the key raises :class:`ValueError` before anything is
    written.
    """
    files = VirtualCardFiles.at(cards_dir, user_id)
    EszigApplet(
        key=key,
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        document=document,
        pin=pin,
        can=can,
        puk=puk,
    )
    files.key.parent.mkdir(parents=True, exist_ok=True)
    secrets = {"pin": pin, "can": can, "puk": puk, "document": document}
    write_pem(files.key, key)
    write_pem(files.certificate, certificate)
    write_bytes(files.secrets, json.dumps(secrets, ensure_ascii=False, indent=2).encode() + b"\n",
                mode=0o600)
    return files
