"""The OpenAI Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch.batch_serving import BatchServing, CreateBatch
from llmq.api.batch.wing import wing
from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.routes.common import caller_of, json_response, listing, tenant_of

router = APIRouter(prefix="/v1")
BODIES: Bodies = {("/v1/batches", "post"): CreateBatch}


def serving(request: Request) -> BatchServing:
    return wing(request).batch_serving


@router.post("/batches")
async def create_batch(request: Request) -> Response:
    caller = await caller_of(request)
    body = await read_body(request, 1_000_000)
    return json_response(await serving(request).create(caller.tenant, body, caller))


@router.get("/batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> Response:
    async with listing(request) as tenant:
        return json_response(await serving(request).list(tenant, limit, after))


@router.get("/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).get(tenant, batch_id))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).cancel(tenant, batch_id))
