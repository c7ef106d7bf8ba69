"""A SAML token in a worker's cache: the one type the token cache and its sharing both use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lxml import etree


@dataclass(frozen=True, slots=True)
class Token:
    identity: str
    assertion: etree._Element
    created: datetime
    expires: datetime
    refresh_at: datetime

    def usable(self, now: datetime) -> bool:
        return now < self.expires

    def fresh(self, now: datetime) -> bool:
        return now < self.refresh_at

    def __repr__(self) -> str:  # never show the assertion
        return f"Token({self.identity}, expires={self.expires.isoformat()})"
