"""Serving OpenAI's other endpoints (`schemas.endpoints.ENDPOINT_PATHS`): authenticate, read
the body (bounded by `LLMQ_MAX_BODY_BYTES` and NATS `max_payload`), find its model, and take
the way every feature takes to its job (`Serving.place`: the queue's admission — a 429
`queue_full` when the model's queue cannot start the job before its deadline — a fair-share
place, the request and concurrency quota); queue one `endpoint` job, and relay the
upstream's answer as it came (status, content type, bytes — binary audio included, as it
streams).

The response cache never serves these (`api.cache.policy.cacheable_kind`): an answer is the
upstream's own bytes, status and content type (audio, images, multipart uploads), which the
cache's JSON or SSE replay does not represent.

Only a model whose worker declares the endpoint serves it: any other is a 404
`model_not_found` for that endpoint, before any quota is taken. Fallbacks of the model table
apply to JSON bodies (the body names the model; a multipart body stays on its model).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llmq.api.endpoints.body import model_of
from llmq.api.engine.attempt import queue_and_answer
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.job import Event, QueuedJob
from llmq.api.engine.model_chain import MODEL_HEADER
from llmq.api.engine.reuse import Ask
from llmq.api.engine.serving import Attempted, Held, Serving
from llmq.api.errors import ApiError, failed_response, public_failure
from llmq.api.listing import ensure_accepting
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.dispatcher.jobs import new_job_id
from llmq.schemas.endpoints import EndpointCall, head_decoder, pack
from llmq.schemas.frames import Done, Failed
from llmq.schemas.openai import patch_body

PAYLOAD_ROOM = 4096
"""Bytes of a job message kept for its call line and headers."""


class EndpointServing:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    async def serves(self, model: str, path: str) -> bool:
        registry = self.serving.rt.registry
        await registry.load_catalog((model,))
        info = registry.model_info(model)
        return info is not None and path in info.endpoints and bool(registry.workers_for(model))

    async def serve(self, request: Request, path: str) -> Response:
        serving, settings = self.serving, self.serving.rt.settings
        ensure_accepting(serving.rt)
        record = RequestRecord(job_id=new_job_id(), route="endpoint")
        record.tenant = await serving.auth.tenant(request)
        wait = first_token_deadline(request, settings.api.deadline, settings.api.max_deadline)
        room = int(serving.rt.nc.max_payload) - PAYLOAD_ROOM
        body = await read_body(request, min(settings.api.max_body_bytes, room))
        content_type = request.headers.get("content-type", "application/json")
        requested = serving.preparer.models.resolve(await model_of(body, content_type))
        record.model = requested
        if not await self.serves(requested, path):
            raise ApiError(
                404,
                f"The model `{requested}` does not serve {path}",
                "model_not_found",
                param="model",
            )
        json_body = content_type.startswith("application/json")
        ask = _Ask(request, record, body, path, content_type, time.time(), wait, json_body)

        def attempt(model: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(ask, model, more)

        chain = serving.through_chain(record, requested, attempt, new_job_id)
        return await unless_gone(request, chain)

    async def _attempt(self, ask: _Ask, model: str, more: bool) -> Attempted:
        serving, record = self.serving, ask.record
        fallback = model != record.model
        if fallback and (not ask.json_body or not await self.serves(model, ask.path)):
            return None, None
        body = patch_body(ask.body, {"model": model}) if fallback else ask.body

        job_ask = Ask(
            request=ask.request,
            record=record,
            kind="endpoint",
            model=model,
            body=pack(EndpointCall(ask.path, ask.content_type), body),
            stream=True,
            estimate=1,
            max_tokens=1,
            user="",
            make_job=EndpointRun.maker(serving, record, 1),
            more=more,
            headers={"x-request-id": record.job_id, MODEL_HEADER: model},
        )
        rank = await serving.auth.rank(ask.request)
        placed = await serving.place(job_ask, rank, ask.time_left)
        if not isinstance(placed, Held):
            return placed
        incoming = ask.request.headers.get("traceparent")
        spec = serving.job_spec(job_ask, ask.submitted, ask.wait, incoming)
        return await queue_and_answer(serving, job_ask, placed, spec)


class _Ask(msgspec.Struct):
    request: Request
    record: RequestRecord
    body: bytes
    path: str
    content_type: str
    submitted: float
    wait: float
    json_body: bool

    def time_left(self) -> float:
        return self.submitted + self.wait - time.time()


class EndpointRun(QueuedJob):
    """One endpoint job: its first chunk is the upstream's status and content type, the
    rest its body's bytes, relayed as they come."""

    async def stream(
        self, first: Event, events: AsyncGenerator[Event, None], headers: dict[str, str]
    ) -> Response:
        if isinstance(first, Failed) or not isinstance(first, bytes):
            await events.aclose()
            failed = first if isinstance(first, Failed) else None
            if failed is None:
                self.settle(502, code="empty_response")
                raise ApiError(502, "the job ended without a result", "empty_response")
            self.settle(failed.status, code=failed.error.code)
            return failed_response(public_failure(failed, self.record.job_id), headers)
        try:
            head = head_decoder.decode(first)
        except msgspec.DecodeError:
            await events.aclose()
            self.settle(502, code="malformed_reply")
            raise ApiError(502, "the worker's reply was malformed", "upstream_error") from None
        return StreamingResponse(
            self._bytes(events),
            status_code=head.status,
            media_type=head.content_type,
            headers=headers,
        )

    async def _bytes(self, events: AsyncGenerator[Event, None]) -> AsyncIterator[bytes]:
        try:
            async for ev in events:
                if isinstance(ev, bytes):
                    self.relayed += 1
                    yield ev
                elif isinstance(ev, Done):
                    self.settle(200, ev)
                    return
                else:  # failed after the answer began: the body ends short
                    self.settle(ev.status, code=ev.error.code)
                    return
        finally:
            self.settle(499, code="client_closed")
            await events.aclose()
