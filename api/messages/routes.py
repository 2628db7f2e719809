"""`POST /v1/messages` (also `?beta=true`, as Anthropic's SDKs send for beta features) and
`POST /v1/messages/count_tokens`. Transport only: `serving` does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.messages.serving import MessagesServing
from llmq.api.routes.plain import PlainRoute

router = APIRouter(prefix="/v1", route_class=PlainRoute)
"""Plain routes (no FastAPI per-request machinery), added to the app's routes directly."""


def _serving(request: Request) -> MessagesServing:
    found: MessagesServing = request.app.state.messages
    return found


@router.post("/messages")
async def create_message(request: Request) -> Response:
    return await _serving(request).create(request)


@router.post("/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    return await _serving(request).count_tokens(request)
