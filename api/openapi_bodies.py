"""Request-body schemas in the OpenAPI documents: the routes read their bodies themselves
(msgspec, not FastAPI's models), so without this `/openapi.json` and `/admin/openapi.json`
would describe no body at all and a schema-driven client or fuzzer could not reach them.
Each feature names its routes' body types; `with_bodies` adds them to a document."""

from __future__ import annotations

from typing import Any

import msgspec

Bodies = dict[tuple[str, str], Any]
"""(path, method) -> the msgspec type of the JSON body, or a ready OpenAPI `requestBody`."""
REF = "#/components/schemas/{name}"


def multipart(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """A `requestBody` of multipart form fields (each an OpenAPI schema)."""
    schema = {"type": "object", "properties": fields, "required": required}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def with_bodies(document: dict[str, Any], bodies: Bodies) -> dict[str, Any]:
    """`document` with a `requestBody` on each operation of `bodies` that it describes."""
    typed = [(at, kind) for at, kind in bodies.items() if not isinstance(kind, dict)]
    refs, components = msgspec.json.schema_components([kind for _, kind in typed], ref_template=REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    given = dict(zip([at for at, _ in typed], refs, strict=True))
    for (path, method), kind in bodies.items():
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        if isinstance(kind, dict):
            operation["requestBody"] = kind
        else:
            content = {"application/json": {"schema": given[(path, method)]}}
            operation["requestBody"] = {"required": True, "content": content}
    return document
