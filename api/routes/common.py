"""What the routes of several features share: the caller's tenant and a JSON reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import Request
from starlette.responses import Response

from llmq.api.auth import Caller

_encoder = msgspec.json.Encoder()


async def tenant_of(request: Request) -> str:
    tenant: str = await request.app.state.serving.auth.tenant(request)
    return tenant


async def caller_of(request: Request) -> Caller:
    """The caller's tenant, the models it (and its key) may use, and its key's id."""
    caller: Caller = await request.app.state.serving.auth.caller(request)
    return caller


def key_of(request: Request) -> str:
    """The id of the API key the request was authenticated by ('' without keys)."""
    key_id: str = request.app.state.serving.auth.key_id(request)
    return key_id


async def count(request: Request, tenant: str) -> None:
    """Count one call of `tenant` against its (and its key's) RPM; 429 past it. A call
    that holds no tokens (an upload, a conversation write) is rate-limited too, once it is
    accepted."""
    await request.app.state.list_gate.count(tenant, key_of(request))


@asynccontextmanager
async def listing(request: Request) -> AsyncIterator[str]:
    """The caller's tenant, for the span of one list call (`ListGate`: paced per tenant)."""
    tenant = await tenant_of(request)
    async with request.app.state.list_gate.enter(tenant, key_of(request)):
        yield tenant


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )
