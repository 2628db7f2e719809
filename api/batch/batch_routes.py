"""The OpenAI Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch.batch_serving import BatchServing, CreateBatch
from llmq.api.batch.record_routes import add_record_routes
from llmq.api.batch.wing import wing
from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.routes.common import caller_of, json_response

router = APIRouter(prefix="/v1")
BODIES: Bodies = {("/v1/batches", "post"): CreateBatch}


def serving(request: Request) -> BatchServing:
    return wing(request).batch_serving


@router.post("/batches")
async def create_batch(request: Request) -> Response:
    caller = await caller_of(request)
    body = await read_body(request, 1_000_000)
    return json_response(await serving(request).create(caller.tenant, body, caller))


add_record_routes(router, serving, kind="batch", plural="batches", cancel=("POST", "/cancel"))
