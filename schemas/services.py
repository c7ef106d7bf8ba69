"""The one table of EESZT services the gateway serves. Pure data, no I/O.

Each row names a business service of the project's own SOAP contract and how the gateway carries
its requests. Everything else that lists services is derived from this table:

- ``schemas.soap.SERVICES`` and ``OPERATION_OF`` (namespace, WSDL file, operations);
- ``schemas.wire.BINDINGS`` (the routing-key pattern ``<family>.#`` of each work queue);
- the dramatiq actors of ``workers.actors`` (actor name = service name, queue, priority);
- ``workers.broker.ACTOR_OF_FAMILY`` (payload type family -> actor).

Adding a service is adding a row here (plus its WSDL/XSD files beside ``schemas/soap`` and its
payload models in ``schemas.payloads``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

#: Root of the project's own namespaces ("gw" = eeszt-gateway contract, version 1).
GW_NS_ROOT: Final = "urn:eeszt-gateway:contract:v1"

QueueClass = Literal["interactive", "batch"]
#: dramatiq priority per queue class: lower runs first, so interactive work overtakes batch
#: work a worker has already prefetched
PRIORITY_OF_CLASS: Final[dict[str, int]] = {"interactive": 0, "batch": 10}


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """One service: ``name`` is the actor name, the URL path segment (``/services/<name>``) and
    the WSDL file stem; ``family`` is the payload type prefix (``erecept`` of
    ``erecept.submit``); ``operations`` maps each payload type to its SOAP operation."""

    name: str
    family: str
    queue_class: QueueClass
    namespace: str
    wsdl: str
    operations: dict[str, str]

    @property
    def priority(self) -> int:
        return PRIORITY_OF_CLASS[self.queue_class]


SERVICE_TABLE: Final[tuple[ServiceRow, ...]] = (
    ServiceRow(name="eRecept", family="erecept", queue_class="interactive",
               namespace=f"{GW_NS_ROOT}:erecept", wsdl="eRecept.wsdl",
               operations={"erecept.submit": "receptRogzites",
                           "erecept.revoke": "receptVisszavonas"}),
    ServiceRow(name="eBeutalo", family="ebeutalo", queue_class="interactive",
               namespace=f"{GW_NS_ROOT}:ebeutalo", wsdl="eBeutalo.wsdl",
               operations={"ebeutalo.submit": "beutaloRogzites"}),
    ServiceRow(name="esemenyKatalogus", family="event", queue_class="batch",
               namespace=f"{GW_NS_ROOT}:esemenykatalogus", wsdl="esemenyKatalogus.wsdl",
               operations={"event.start": "esemenyKezdet", "event.end": "esemenyVeg"}),
    # EHR: "Egészségügyi Háttértár"
    ServiceRow(name="eht", family="ehr", queue_class="batch",
               namespace=f"{GW_NS_ROOT}:eht", wsdl="eht.wsdl",
               operations={"ehr.submit": "dokumentumBekuldes"}),
    ServiceRow(name="eProfil", family="eprofil", queue_class="interactive",
               namespace=f"{GW_NS_ROOT}:eprofil", wsdl="eProfil.wsdl",
               operations={"eprofil.update": "profilModositas"}),
)



def service_of_family(rows: Iterable[ServiceRow]) -> dict[str, str]:
    """Payload type family -> service name (= its actor), for ``rows``."""
    return {row.family: row.name for row in rows}


SERVICE_BY_NAME: Final[dict[str, ServiceRow]] = {row.name: row for row in SERVICE_TABLE}
#: payload type family -> service name (= its actor)
SERVICE_OF_FAMILY: Final[dict[str, str]] = service_of_family(SERVICE_TABLE)


def check_table(rows: tuple[ServiceRow, ...] = SERVICE_TABLE) -> None:
    """ValueError naming the row and field of the first inconsistency of ``rows``."""
    seen: dict[str, set[str]] = {"name": set(), "family": set(), "wsdl": set()}
    for row in rows:
        for field in seen:
            value = getattr(row, field)
            if value in seen[field]:
                raise ValueError(f"service {row.name}: {field} {value!r} is used twice")
            seen[field].add(value)
        if row.queue_class not in PRIORITY_OF_CLASS:
            raise ValueError(f"service {row.name}: queue_class {row.queue_class!r} is not one of "
                             f"{', '.join(PRIORITY_OF_CLASS)}")
        if not row.operations:
            raise ValueError(f"service {row.name}: operations is empty")
        for ptype in row.operations:
            if ptype.split(".", 1)[0] != row.family:
                raise ValueError(f"service {row.name}: operations payload type {ptype!r} is not "
                                 f"of family {row.family!r}")


check_table()
