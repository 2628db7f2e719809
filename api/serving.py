"""Serving an OpenAI request through the job queue: validate, route, submit, relay.

Transport-free: routes hand in the raw body and headers; this module decides the job and
turns its events into a JSON response or an SSE stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError, error_bytes, error_response
from api.protocol import decode, read_body
from api.runtime import Runtime
from api.sse import DONE, SSEResponse, event
from dispatcher.dispatch import DispatchError, JobRun
from dispatcher.jobs import JobSpec, new_job_id
from schemas.frames import Done, Failed
from schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_request_decoder,
    completion_request_decoder,
    embedding_request_decoder,
)

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

AnyRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


class Serving:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def chat(self, request: Request) -> Response:
        body = await read_body(request, self.rt.settings.max_body_bytes)
        req = decode(body, chat_request_decoder)
        if not req.messages:
            raise ApiError(
                400,
                "`messages` must contain at least one message",
                "invalid_request",
                param="messages",
            )
        return await self._serve(request, req, body, "chat", req.stream)

    async def completion(self, request: Request) -> Response:
        body = await read_body(request, self.rt.settings.max_body_bytes)
        req = decode(body, completion_request_decoder)
        return await self._serve(request, req, body, "completion", req.stream)

    async def embedding(self, request: Request) -> Response:
        body = await read_body(request, self.rt.settings.max_body_bytes)
        req = decode(body, embedding_request_decoder)
        return await self._serve(request, req, body, "embedding", False)

    async def _serve(
        self, request: Request, req: AnyRequest, body: bytes, kind: str, stream: bool
    ) -> Response:
        if not self.rt.accepting:
            raise ApiError(503, "the api is shutting down", "shutting_down")
        tenant = "default"
        model = self._route(req.model, kind)
        job_id = new_job_id()
        settings = self.rt.settings
        spec = JobSpec(
            job_id=job_id,
            model=model,
            body=body if model == req.model else _with_model(req, model),
            tenant=tenant,
            deadline_ms=int((time.time() + settings.deadline) * 1000),
            kind=kind,
            traceparent=request.headers.get("traceparent"),
        )
        try:
            run = await self.rt.dispatcher.submit(spec)
        except DispatchError as exc:
            raise ApiError(exc.status, exc.message, exc.code) from None
        headers = {"x-request-id": job_id}
        if stream:
            return await self._stream(run, headers)
        return await self._collect(run, headers)

    def _route(self, model: str, kind: str) -> str:
        registry = self.rt.registry
        if registry.workers_for(model):
            info = registry.model_info(model)
            if info is not None and kind not in info.kinds:
                raise ApiError(
                    400,
                    f"model `{model}` does not support {kind} requests",
                    "unsupported_endpoint",
                    param="model",
                )
            return model
        if registry.known(model):
            raise ApiError(
                503, f"no live worker serves model `{model}`", "no_worker", param="model"
            )
        raise ApiError(404, f"The model `{model}` does not exist", "model_not_found", param="model")

    async def _collect(self, run: JobRun, headers: dict[str, str]) -> Response:
        async for ev in run.events():
            if isinstance(ev, Done):
                if not ev.body:
                    raise ApiError(502, "the worker sent no response body", "empty_response")
                return Response(bytes(ev.body), media_type="application/json", headers=headers)
            if isinstance(ev, Failed):
                return _failed_response(ev, headers)
        raise ApiError(502, "the job ended without a result", "empty_response")

    async def _stream(self, run: JobRun, headers: dict[str, str]) -> Response:
        events = run.events()
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise ApiError(502, "the job ended without a result", "empty_response") from None
        if isinstance(first, Failed):
            await events.aclose()
            return _failed_response(first, headers)
        return SSEResponse(self._relay(first, events), headers)

    async def _relay(
        self, first: bytes | Done | Failed, events: AsyncGenerator[bytes | Done | Failed, None]
    ) -> AsyncIterator[bytes]:
        self.rt.open_streams += 1
        try:
            ev: Any = first
            while True:
                if isinstance(ev, bytes):
                    yield b"data: " + ev + b"\n\n"
                elif isinstance(ev, Failed):
                    yield event(error_bytes(ev.error))
                    break
                else:
                    break
                try:
                    ev = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield DONE
        finally:
            self.rt.open_streams -= 1
            await events.aclose()


def _failed_response(frame: Failed, headers: dict[str, str]) -> Response:
    if frame.retry_after is not None:
        headers = {**headers, "retry-after": str(max(1, round(frame.retry_after)))}
    return error_response(frame.status, frame.error, headers)


def _with_model(req: AnyRequest, model: str) -> bytes:
    return _encoder.encode(msgspec.structs.replace(req, model=model))
