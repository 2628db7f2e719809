"""The OpenAI Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch_service import BatchService
from llmq.api.protocol import read_body

router = APIRouter(prefix="/v1")
_encoder = msgspec.json.Encoder()


def service(request: Request) -> BatchService:
    svc: BatchService = request.app.state.batches
    return svc


async def tenant_of(request: Request) -> str:
    tenant: str = await request.app.state.serving.auth.tenant(request)
    return tenant


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )


@router.post("/batches")
async def create_batch(request: Request) -> Response:
    tenant = await tenant_of(request)
    body = await read_body(request, 1_000_000)
    return json_response(await service(request).create_batch(tenant, body))


@router.get("/batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> Response:
    tenant = await tenant_of(request)
    return json_response(await service(request).list_batches(tenant, limit, after))


@router.get("/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await service(request).get_batch(tenant, batch_id))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await service(request).cancel_batch(tenant, batch_id))
