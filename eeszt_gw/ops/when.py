"""Times the operator types: ``--since``, ``--until`` and ``--older-than`` of ``audit`` and ``dlq``.

A time is a duration ago (``90s``, ``15m``, ``2h``, ``3d``, ``1w``) or an ISO-8601 time, UTC
unless it names a zone. A wrong one is a :class:`eeszt_gw.config.UsageError` that names the flag.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from eeszt_gw.config import UsageError

#: seconds per unit of a duration
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|min|m|h|d|w)\s*$")
#: the forms, for help texts
FORMS = "a duration ago (90s, 15m, 2h, 3d, 1w) or an ISO-8601 time (UTC unless it names a zone)"


def parse_when(text: str, *, now: datetime | None = None, flag: str = "") -> datetime:
    """``2h``/``3d``/``90s``/``15m``/``1w`` ago, or an ISO-8601 time (UTC unless it names a
    zone). Raises :class:`UsageError`, naming ``flag`` when given."""
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag + ': ' if flag else ''}{text!r} is neither a duration (90s, 15m, "
                         "2h, 3d, 1w) nor an ISO-8601 time (2026-11-26T08:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse_optional(text: str | None, flag: str) -> datetime | None:
    """:func:`parse_when` of a flag's value, None when the flag was not given."""
    return parse_when(text, flag=flag) if text else None
