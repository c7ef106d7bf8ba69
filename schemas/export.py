"""JSON Schema export of the message contract, for HIS teams that do not use Python.

:func:`json_schemas` is pure: it returns dictionaries and writes nothing (the CLI writes the
files). Requests are exported in pydantic's *validation* mode (what a HIS may send: fields with
defaults are optional); replies in *serialization* mode (what a HIS will receive: every field
is present).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from pydantic import BaseModel, TypeAdapter, create_model

from schemas.envelope import RequestEnvelope
from schemas.payloads import PAYLOAD_TYPES
from schemas.replies import REPLY_ADAPTER, Accepted, Failed, Rejected, StatusUpdate
from schemas.soap import GW_NS_ROOT

__all__ = ["JSON_SCHEMA_DIALECT", "SCHEMA_ID_ROOT", "envelope_model_for", "json_schemas"]

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: ``$id`` of every exported schema is this root, a colon, and the schema's name.
SCHEMA_ID_ROOT: Final = f"{GW_NS_ROOT}:json-schema"

_REPLY_MODELS: Final[dict[str, type[BaseModel]]] = {
    "reply.accepted": Accepted,
    "reply.rejected": Rejected,
    "reply.failed": Failed,
    "reply.status": StatusUpdate,
}


@cache
def envelope_model_for(message_type: str) -> type[RequestEnvelope]:
    """A :class:`RequestEnvelope` subclass whose ``payload`` is only ``message_type``.

    Validates like the full envelope, restricted to one payload type; used for per-type schemas.

    Raises:
        KeyError: ``message_type`` is not a payload type.
    """
    payload_model = PAYLOAD_TYPES[message_type]
    return create_model(
        f"{payload_model.__name__}Request",
        __base__=RequestEnvelope,
        __module__=__name__,
        __doc__=f"A request envelope carrying a {message_type} payload.",
        payload=(payload_model, ...),
    )


def _finish(schema: dict[str, Any], *, name: str, title: str) -> dict[str, Any]:
    # $schema/$id/title first, so a reader of the file sees what it is before the properties.
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{SCHEMA_ID_ROOT}:{name}", "title": title} | {
        key: value for key, value in schema.items() if key != "title"
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per message, keyed by name.

    Names: ``"request"`` (the envelope with any payload), each payload type (``"erecept.submit"``
    ...: the envelope restricted to that payload), ``"reply"`` (any reply) and ``"reply.<kind>"``
    (``reply.accepted``, ``reply.rejected``, ``reply.failed``, ``reply.status``). Every schema has
    ``$schema``, ``$id`` and ``title``. Returns fresh dictionaries on each call; never raises.
    """
    schemas: dict[str, dict[str, Any]] = {
        "request": _finish(
            RequestEnvelope.model_json_schema(mode="validation"),
            name="request",
            title="RequestEnvelope",
        )
    }
    for message_type in PAYLOAD_TYPES:
        model = envelope_model_for(message_type)
        schemas[message_type] = _finish(
            model.model_json_schema(mode="validation"), name=message_type, title=model.__name__
        )
    reply_adapter: TypeAdapter[Any] = REPLY_ADAPTER
    schemas["reply"] = _finish(
        reply_adapter.json_schema(mode="serialization"), name="reply", title="Reply"
    )
    for name, reply_model in _REPLY_MODELS.items():
        schemas[name] = _finish(
            reply_model.model_json_schema(mode="serialization"),
            name=name,
            title=reply_model.__name__,
        )
    return schemas
