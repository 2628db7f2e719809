"""`GET /metrics`: the api's Prometheus metrics (unauthenticated, like /health: expose the
api port only where scrapers and clients may reach it, or block the path at the proxy)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmq.api.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    observability = request.app.state.observability
    return Response(await observability.metrics.render(), media_type=CONTENT_TYPE)
