"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.serving import Serving
from llmq.schemas.openai import ModelCard, ModelList

router = APIRouter(prefix="/v1")
_encoder = msgspec.json.Encoder()


def _serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serving(request).chat(request)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _serving(request).completion(request)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await _serving(request).embedding(request)


@router.get("/models")
async def list_models(request: Request) -> Response:
    registry = request.app.state.runtime.registry
    cards = []
    for model, workers in sorted(registry.live_models().items()):
        info = registry.model_info(model)
        created = int(info.first_seen) if info else 0
        cards.append(ModelCard(id=model, created=created, owned_by=workers[0].backend))
    return Response(_encoder.encode(ModelList(data=cards)), media_type="application/json")
