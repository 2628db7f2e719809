"""Chat's routes: /v1/chat/completions and /v1/completions (plain routes, matched first) and
/v1/embeddings. Transport only: `ChatServing` decides."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.chat.serving import ChatServing
from llmq.api.openapi_bodies import Bodies
from llmq.api.routes.plain import PlainRoute
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter(prefix="/v1")
BODIES: Bodies = {
    ("/v1/chat/completions", "post"): ChatCompletionRequest,
    ("/v1/completions", "post"): CompletionRequest,
    ("/v1/embeddings", "post"): EmbeddingRequest,
}
"""What the OpenAPI document says these routes read (`api/openapi_bodies.py`)."""
hot = APIRouter(prefix="/v1", route_class=PlainRoute)
"""The two routes nearly every request takes, without FastAPI's per-request machinery;
included first, so they are also matched first."""


def _serving(request: Request) -> ChatServing:
    serving: ChatServing = request.app.state.serving
    return serving


@hot.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serving(request).chat(request)


@hot.post("/completions")
async def completions(request: Request) -> Response:
    return await _serving(request).completion(request)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await _serving(request).embedding(request)
