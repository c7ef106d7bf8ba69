"""One table of services (schemas/services.py): everything that lists EESZT services derives from
it, so adding a row is the only change the gateway's plumbing needs, and nothing lists a service
the table does not."""

from __future__ import annotations

import dataclasses

import pytest
from dramatiq.brokers.stub import StubBroker

from schemas.payloads import BATCH_TYPES, INTERACTIVE_TYPES, PAYLOAD_TYPES
from schemas.permissions import PERMISSIONS
from schemas.services import (
    GW_NS_ROOT,
    SERVICE_OF_FAMILY,
    SERVICE_TABLE,
    ServiceRow,
    check_table,
    service_of_family,
)
from schemas.soap import OPERATION_OF, SERVICES, contract_path, services_of
from schemas.wire import BINDINGS, QUEUE_CLASSES, bindings_of, queue_for_type, queue_of_service
from workers.actors import LOGIN_EVENTS, SERVICE_ACTORS, UNROUTABLE, actor_specs, register_actors
from workers.broker import ACTOR_OF_FAMILY, UNROUTABLE_ACTOR, wrap_delivery

NAMES = {row.name for row in SERVICE_TABLE}
NEW_ROW = ServiceRow(name="eTeszt", family="teszt", queue_class="batch",
                     namespace=f"{GW_NS_ROOT}:eteszt", wsdl="eTeszt.wsdl",
                     operations={"teszt.submit": "tesztBekuldes"})


def _noop(body_b64, meta):
    return None


def test_every_service_of_the_table_has_a_soap_service_with_its_contract_files():
    # Given the table and the SOAP contract
    # Then both list exactly the same services, with the table's namespace, WSDL and operations
    assert set(SERVICES) == NAMES
    for row in SERVICE_TABLE:
        svc = SERVICES[row.name]
        assert (svc.namespace, svc.wsdl, svc.operations) == (row.namespace, row.wsdl,
                                                             row.operations)
        assert contract_path(row.wsdl).is_file()
        for ptype, op in row.operations.items():
            assert OPERATION_OF[ptype] == (svc, op)
    # and no WSDL beside the contract is missing from the table (sts is the token service)
    wsdls = {p.name for p in contract_path(SERVICE_TABLE[0].wsdl).parent.glob("*.wsdl")}
    assert wsdls == {row.wsdl for row in SERVICE_TABLE} | {"sts.wsdl"}


def test_every_service_of_the_table_has_a_binding_on_the_queue_of_its_class():
    # Given the table and the work queues' bindings
    patterns = [p for queue_patterns in BINDINGS.values() for p in queue_patterns]
    # Then each service's family is bound to exactly the queue of its class, and nothing else is
    assert sorted(patterns) == sorted(f"{row.family}.#" for row in SERVICE_TABLE)
    for row in SERVICE_TABLE:
        assert f"{row.family}.#" in BINDINGS[QUEUE_CLASSES[row.queue_class]]
        assert queue_of_service(row.name) == QUEUE_CLASSES[row.queue_class]
        for ptype in row.operations:
            assert queue_for_type(ptype) == QUEUE_CLASSES[row.queue_class]


def test_every_service_of_the_table_has_an_actor_and_no_actor_is_unlisted():
    # Given a broker
    broker = StubBroker()
    # When the workers' actors are declared on it
    actors = register_actors(broker, _noop, _noop)
    # Then there is one per service, on its class's queue at its priority, plus the two others
    assert set(actors) == NAMES | {UNROUTABLE, LOGIN_EVENTS}
    for row in SERVICE_TABLE:
        actor = actors[row.name]
        assert actor.queue_name == QUEUE_CLASSES[row.queue_class]
        assert actor.priority == row.priority
    assert {a.name for a in SERVICE_ACTORS} == NAMES


def test_each_family_routes_to_its_services_actor():
    # Given the table's families and the broker's map
    # Then the map is the table's, and a delivery of each payload type reaches its service's actor
    assert ACTOR_OF_FAMILY == {row.family: row.name for row in SERVICE_TABLE} == SERVICE_OF_FAMILY
    for row in SERVICE_TABLE:
        for ptype in row.operations:
            message = wrap_delivery(queue=QUEUE_CLASSES[row.queue_class], body=b"{}",
                                    routing_key=ptype)
            assert message.actor_name == row.name
    assert wrap_delivery(queue="eeszt.interactive", body=b"{}",
                         routing_key="nothing.here").actor_name == UNROUTABLE_ACTOR


def test_payload_models_and_permissions_cover_exactly_the_tables_services():
    # Given the payload models, their interactive/batch split and the permission table
    operations = {ptype for row in SERVICE_TABLE for ptype in row.operations}
    interactive = {p for row in SERVICE_TABLE if row.queue_class == "interactive"
                   for p in row.operations}
    # Then each lists the table's services and payload types, no more and no fewer
    assert set(PAYLOAD_TYPES) == operations
    assert INTERACTIVE_TYPES == interactive and BATCH_TYPES == operations - interactive
    assert set(PERMISSIONS) == NAMES


def test_adding_a_row_is_the_only_change_needed():
    # Given the table with one more row
    rows = (*SERVICE_TABLE, NEW_ROW)
    # When everything is derived from it
    services = services_of(rows)
    bindings = bindings_of(rows)
    specs = actor_specs(rows)
    families = service_of_family(rows)
    actors = register_actors(StubBroker(), _noop, services=specs)
    # Then the new service has a SOAP service, a binding, an actor and a family route
    assert services["eTeszt"].operations == {"teszt.submit": "tesztBekuldes"}
    assert services["eTeszt"].namespace == f"{GW_NS_ROOT}:eteszt"
    assert "teszt.#" in bindings[QUEUE_CLASSES["batch"]]
    assert actors["eTeszt"].queue_name == QUEUE_CLASSES["batch"] and actors["eTeszt"].priority == 10
    assert families["teszt"] == "eTeszt"
    # and the existing services keep what they had
    assert {k: services[k] for k in SERVICES} == SERVICES
    assert {q: tuple(p for p in bindings[q] if p != "teszt.#") for q in bindings} == BINDINGS
    check_table(rows)


@pytest.mark.parametrize(("change", "named"), [
    ({"name": "eRecept"}, "name 'eRecept' is used twice"),
    ({"family": "erecept"}, "family 'erecept' is used twice"),
    ({"queue_class": "nightly"}, "queue_class 'nightly'"),
    ({"operations": {}}, "operations is empty"),
    ({"operations": {"other.submit": "x"}}, "payload type 'other.submit' is not of family"),
])
def test_an_inconsistent_row_is_refused_naming_the_field(change, named):
    # Given a new row with one inconsistent field
    row = dataclasses.replace(NEW_ROW, **change)
    # When the table with it is checked
    with pytest.raises(ValueError) as err:
        check_table((*SERVICE_TABLE, row))
    # Then the error names the field and the reason
    assert named in str(err.value)
