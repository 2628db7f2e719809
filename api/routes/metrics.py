"""`GET /metrics`: the api's Prometheus metrics. Open unless `LLMQ_METRICS_TOKEN` is set;
then a scraper must send `Authorization: Bearer <token>` (Prometheus: `authorization:
credentials_file`), compared in constant time. Either way, expose the api port's /metrics
only where scrapers may reach it, or block the path at the proxy."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmq.api.errors import ApiError
from llmq.api.metrics import CONTENT_TYPE

router = APIRouter()


def _require_token(request: Request) -> None:
    token: str = request.app.state.settings.observability.metrics_token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ApiError(
            401,
            "/metrics needs `Authorization: Bearer <LLMQ_METRICS_TOKEN>`",
            "invalid_metrics_token",
            headers={"www-authenticate": "Bearer"},
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    _require_token(request)
    observability = request.app.state.observability
    return Response(await observability.metrics.render(), media_type=CONTENT_TYPE)
