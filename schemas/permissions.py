"""The permission table: which role may do what, per service.

Restated from the EESZT workshop slides. The simulator enforces it;
the workers use it to pick the identity whose token a request needs. Pure data, no I/O.

| service           | write       | read            | list            |
|-------------------|-------------|-----------------|-----------------|
| esemenyKatalogus  | institution | treating doctor | treating doctor |
| eht (EHR)         | institution | treating doctor | treating doctor |
| eProfil           | doctor      | treating doctor | n/a             |
| eRecept           | doctor      | doctor, pharmacy (as institution) | doctor |
| eBeutalo          | doctor      | institution     | institution     |

"Query by idempotency key" is how a submitter checks whether its own write landed, so it is
allowed to whoever may write to that service. Beyond the table, the simulator asks a doctor for
a two-factor login (MobilToken or eSZIG card, not a password alone) before the doctor writes
eRecept, eBeutalo or eProfil (``simulator/rules.py``).
"""

from __future__ import annotations

import enum
import functools


class Role(str, enum.Enum):
    INSTITUTION = "institution"
    DOCTOR = "doctor"


class Access(str, enum.Enum):
    WRITE = "write"
    READ = "read"
    LIST = "list"


PERMISSIONS: dict[str, dict[Access, frozenset[Role]]] = {
    "esemenyKatalogus": {
        Access.WRITE: frozenset({Role.INSTITUTION}),
        Access.READ: frozenset({Role.DOCTOR}),
        Access.LIST: frozenset({Role.DOCTOR}),
    },
    "eht": {
        Access.WRITE: frozenset({Role.INSTITUTION}),
        Access.READ: frozenset({Role.DOCTOR}),
        Access.LIST: frozenset({Role.DOCTOR}),
    },
    "eProfil": {
        Access.WRITE: frozenset({Role.DOCTOR}),
        Access.READ: frozenset({Role.DOCTOR}),
        Access.LIST: frozenset(),
    },
    "eRecept": {
        Access.WRITE: frozenset({Role.DOCTOR}),
        Access.READ: frozenset({Role.DOCTOR, Role.INSTITUTION}),
        Access.LIST: frozenset({Role.DOCTOR}),
    },
    "eBeutalo": {
        Access.WRITE: frozenset({Role.DOCTOR}),
        Access.READ: frozenset({Role.INSTITUTION}),
        Access.LIST: frozenset({Role.INSTITUTION}),
    },
}


def is_allowed(service: str, access: Access, role: str) -> bool:
    """True when ``role`` may perform ``access`` on ``service``. Unknown services or roles: False."""
    try:
        return Role(role) in PERMISSIONS[service][access]
    except (KeyError, ValueError):
        return False


@functools.cache  # the table is fixed: asked once per request, computed once per service
def writer_role(service: str) -> Role:
    """The role whose token a write to ``service`` needs (a doctor's, or the institution's).

    Raises KeyError for an unknown service.
    """
    (role,) = sorted(PERMISSIONS[service][Access.WRITE], key=lambda r: r.value)[:1]
    return role
