"""The routes every kind of durable record has alike (`/v1/jobs`, `/v1/batches`): a page of
the tenant's records, one record, and its cancel; each kind brings its own create route and
serving module.

No `from __future__ import annotations` here: FastAPI reads the id parameter's annotation,
which names the kind's path parameter, at run time."""

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from llmq.api.routes.common import json_response, listing, tenant_of


class RecordServing(Protocol):
    async def list(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]: ...

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]: ...

    async def cancel(self, tenant: str, public_id: str) -> dict[str, Any]: ...


def add_record_routes(
    router: APIRouter,
    serving: Callable[[Request], RecordServing],
    *,
    kind: str,
    plural: str,
    cancel: tuple[str, str],
) -> None:
    """`GET /<plural>`, `GET /<plural>/{<kind>_id}` and the cancel route, `cancel` =
    (method, path after the id: '' or '/cancel'). Route names (and so OpenAPI operation ids)
    are `list_<plural>`, `get_<kind>`, `cancel_<kind>`."""
    collection, param = f"/{plural}", f"{kind}_id"
    one = f"{collection}/{{{param}}}"
    Id = Annotated[str, Path(alias=param, title=param.replace("_", " ").title())]

    async def list_records(request: Request, limit: int = 20, after: str | None = None) -> Response:
        async with listing(request) as tenant:
            return json_response(await serving(request).list(tenant, limit, after))

    async def get_record(request: Request, public_id: Id) -> Response:
        tenant = await tenant_of(request)
        return json_response(await serving(request).get(tenant, public_id))

    async def cancel_record(request: Request, public_id: Id) -> Response:
        tenant = await tenant_of(request)
        return json_response(await serving(request).cancel(tenant, public_id))

    router.add_api_route(collection, list_records, methods=["GET"], name=f"list_{plural}")
    router.add_api_route(one, get_record, methods=["GET"], name=f"get_{kind}")
    method, tail = cancel
    router.add_api_route(one + tail, cancel_record, methods=[method], name=f"cancel_{kind}")
