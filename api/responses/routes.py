"""The Responses API: `POST /v1/responses`, `GET|DELETE /v1/responses/{id}`,
`POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.openapi_bodies import Bodies
from llmq.api.responses.serving import ResponsesServing
from llmq.api.routes.common import json_response, tenant_of
from llmq.schemas.responses import ResponseRequest

router = APIRouter(prefix="/v1")
BODIES: Bodies = {("/v1/responses", "post"): ResponseRequest}


def serving(request: Request) -> ResponsesServing:
    found: ResponsesServing = request.app.state.responses
    return found


async def scope_of(request: Request) -> str:
    """The caller's tenant scope: what its responses and conversations are stored under."""
    return await serving(request).scopes.of(await tenant_of(request))


@router.post("/responses")
async def create_response(request: Request) -> Response:
    return await serving(request).create(request)


@router.get("/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).records.get(scope, response_id))


@router.delete("/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).records.delete(scope, response_id))


@router.post("/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    scope = await scope_of(request)
    return json_response(await serving(request).records.cancel(scope, response_id))


@router.get("/responses/{response_id}/input_items")
async def input_items(
    request: Request,
    response_id: str,
    limit: int = 20,
    order: str = "desc",
    after: str | None = None,
) -> Response:
    scope = await scope_of(request)
    records = serving(request).records
    return json_response(await records.input_items(scope, response_id, limit, order, after))
