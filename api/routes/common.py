"""What the routes of several features share: the caller's tenant and a JSON reply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from fastapi import Request
from starlette.responses import Response

_encoder = msgspec.json.Encoder()


async def tenant_of(request: Request) -> str:
    tenant: str = await request.app.state.serving.auth.tenant(request)
    return tenant


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )
