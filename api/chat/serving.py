"""Chat: `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` served through the
job queue: authenticate, route, reserve, submit, relay — on the shared `Serving`
(`llmq.api.engine.serving`): each model of the fallback chain is one attempt, one
`QueuedJob`.

Transport-free: routes hand in the request; this module decides the job and turns its
events into a JSON response or an SSE stream.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from llmq.api.engine.attempt import queue_and_answer
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.job import QueuedJob
from llmq.api.engine.model_chain import MODEL_HEADER, for_model
from llmq.api.engine.reuse import Ask
from llmq.api.engine.serving import Attempted, Held, Serving
from llmq.api.errors import ApiError, api_error
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.api.reservations import end_user
from llmq.api.tracing import begin, mark, traceparent
from llmq.dispatcher.jobs import new_job_id
from llmq.schemas.admission import AnyRequest, PreparedRequest, Refusal
from llmq.schemas.envelope import JobKind


class ChatServing(Serving):
    """`Serving` with the chat, completion and embedding entry points."""

    async def chat(self, request: Request) -> Response:
        return await self._handle(request, "chat")

    async def completion(self, request: Request) -> Response:
        return await self._handle(request, "completion")

    async def embedding(self, request: Request) -> Response:
        return await self._handle(request, "embedding")

    async def _handle(self, request: Request, kind: JobKind) -> Response:
        record = RequestRecord(job_id=new_job_id(), route=kind)
        record.trace = begin(request, kind, record.started)
        try:
            try:
                return await self._serve(request, kind, record)
            except Refusal as refusal:
                raise api_error(refusal) from None
        except ApiError as exc:
            record.status, record.error_code = exc.status, exc.code
            self.observe(record)
            exc.headers.setdefault("x-request-id", record.job_id)
            raise

    async def _serve(self, request: Request, kind: JobKind, record: RequestRecord) -> Response:
        settings = self.rt.settings
        if not self.rt.accepting:
            raise ApiError(503, "the api is shutting down", "shutting_down")
        record.tenant = await self.auth.tenant(request)
        mark(record.trace, "auth")
        wait = first_token_deadline(request, settings.api.deadline, settings.api.max_deadline)
        body = await read_body(request, settings.api.max_body_bytes)
        req = self.preparer.decode(kind, body)
        requested = self.preparer.models.resolve(req.model)
        record.model = requested
        ask = _Ask(request, kind, record, req, body, time.time(), wait)

        def attempt(model: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(ask, model, more)

        return await unless_gone(
            request, self.through_chain(record, requested, attempt, new_job_id)
        )

    async def _attempt(self, ask: _Ask, model: str, more: bool) -> Attempted:
        """Try one model of the chain: its response, or why to move on (a fallback cause,
        None for a fallback this request cannot use) and the failure the client would see."""
        record, request = ask.record, ask.request
        prepared = self._prepare(ask, model, more)
        if not isinstance(prepared, PreparedRequest):
            return prepared
        record.stream = prepared.stream
        mark(record.trace, "prepared")
        rank = await self.auth.rank(request)
        job_ask = self._job_ask(ask, prepared, model, more)
        placed = await self.place(job_ask, rank, ask.time_left)
        if not isinstance(placed, Held):
            return placed
        mark(record.trace, "quota")
        incoming = traceparent(record.trace, request.headers.get("traceparent"))
        spec = self.job_spec(job_ask, ask.submitted, ask.wait, incoming)
        mark(record.trace, "submitted")
        return await queue_and_answer(self, job_ask, placed, spec)

    def _prepare(self, ask: _Ask, model: str, more: bool) -> PreparedRequest | Attempted:
        """The request as `model` takes it, or why to move on (as `_attempt` returns it)
        when it cannot: unknown or unable here, no live worker."""
        fallback = model != ask.record.model
        try:
            sent, sent_body = (
                for_model(ask.req, ask.body, model) if fallback else (ask.req, ask.body)
            )
            # waits for a worker only as the last model left and the one asked for
            live_now = more or fallback
            prepared = self.preparer.prepare_decoded(sent, ask.kind, sent_body, live_now=live_now)
        except Refusal as refusal:
            return self.refused(model, more, fallback, refusal)
        return prepared

    def _job_ask(self, ask: _Ask, prepared: PreparedRequest, model: str, more: bool) -> Ask:
        """The attempt as the response cache and the quota (`Serving.place`) see it."""
        record = ask.record
        return Ask(
            request=ask.request,
            record=record,
            kind=ask.kind,
            model=prepared.model,
            body=prepared.body,
            stream=prepared.stream,
            estimate=prepared.prompt_estimate,
            max_tokens=prepared.max_tokens,
            user=end_user(prepared.request),
            make_job=QueuedJob.maker(self, record, prepared.prompt_estimate),
            more=more,
            headers={"x-request-id": record.job_id, MODEL_HEADER: model},
        )


@dataclass(slots=True)
class _Ask:
    """One chat request as every attempt of its fallback chain sees it."""

    request: Request
    kind: JobKind
    record: RequestRecord
    req: AnyRequest
    body: bytes
    submitted: float
    """Wall time the request was read."""
    wait: float
    """Seconds from `submitted` to the first-token deadline."""

    def time_left(self) -> float:
        return self.submitted + self.wait - time.time()
