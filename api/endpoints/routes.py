"""OpenAI's other endpoints: `POST /v1/moderations`, `/v1/images/generations`,
`/v1/images/edits`, `/v1/audio/speech`, `/v1/audio/transcriptions`,
`/v1/audio/translations`, `/v1/rerank`. Transport only: `EndpointServing` decides."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.endpoints.serving import EndpointServing
from llmq.schemas.endpoints import ENDPOINT_PATHS

router = APIRouter()


def _route(path: str) -> None:
    async def endpoint(request: Request) -> Response:
        serving: EndpointServing = request.app.state.endpoints
        return await serving.serve(request, path)

    endpoint.__name__ = "post_" + path.removeprefix("/v1/").replace("/", "_")
    router.add_api_route(path, endpoint, methods=["POST"], summary=f"POST {path}")


for _path in ENDPOINT_PATHS:
    _route(_path)
