"""Serving an OpenAI request through the job queue: authenticate, route, reserve, submit,
relay — and release its reservation exactly once however it ends.

Transport-free: routes hand in the request; this module decides the job and turns its
events into a JSON response or an SSE stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.auth import Authenticator
from llmq.api.errors import ApiError, api_error, error_bytes, error_response, public_failure
from llmq.api.preparation import RequestPreparer
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.reservations import Reservations
from llmq.api.runtime import Runtime
from llmq.api.sse import DONE, SSEResponse, event
from llmq.api.tracing import RequestTrace, begin, mark, traceparent
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.dispatcher.jobs import JobSpec, new_job_id
from llmq.schemas.admission import FAILED, JobUsage, Refusal, Reservation
from llmq.schemas.envelope import JobKind
from llmq.schemas.frames import Done, Failed

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

Event = bytes | Done | Failed


@dataclass
class RequestRecord:
    """One request as observers (metrics, the request log) see it when it ends."""

    job_id: str
    route: str
    tenant: str = ""
    model: str = ""
    stream: bool = False
    status: int = 200
    error_code: str | None = None
    worker: str | None = None
    started: float = field(default_factory=time.monotonic)
    latency: float = 0.0
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trace: RequestTrace | None = None
    """OpenTelemetry spans of this request; None when tracing is off (api/tracing.py)."""


Observer = Callable[[RequestRecord], None]


class Serving:
    def __init__(
        self,
        runtime: Runtime,
        auth: Authenticator,
        reservations: Reservations,
        preparer: RequestPreparer,
        observers: list[Observer] | None = None,
    ) -> None:
        self.rt = runtime
        self.auth = auth
        self.reservations = reservations
        self.preparer = preparer
        self.observers: list[Observer] = observers if observers is not None else []

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
            self._observe(record)
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
        record.model = self.preparer.models.resolve(req.model)
        prepared = self.preparer.prepare_decoded(req, kind, body)
        record.stream = prepared.stream
        mark(record.trace, "prepared")
        reservation = await self.reservations.reserve(
            record.tenant, prepared.model, prepared.prompt_estimate, prepared.max_tokens,
            record.job_id,
        )  # fmt: skip
        if isinstance(reservation, Refusal):
            raise reservation
        mark(record.trace, "quota")
        submitted = time.time()
        spec = JobSpec(
            job_id=record.job_id,
            model=prepared.model,
            body=prepared.body,
            tenant=record.tenant,
            deadline_ms=int((submitted + wait) * 1000),
            kind=kind,
            traceparent=traceparent(record.trace, request.headers.get("traceparent")),
            end_ms=int((submitted + settings.api.max_deadline) * 1000),
            stream=prepared.stream,
        )
        mark(record.trace, "submitted")
        try:
            run = await self.rt.dispatcher.submit(spec)
        except DispatchError as exc:
            self.reservations.release_later(reservation, FAILED)
            raise ApiError(exc.status, exc.message, exc.code, headers=reservation.headers) from None
        mark(record.trace, "published", run)
        job = _Job(self, run, reservation, record, prepared.prompt_estimate)
        headers = {"x-request-id": record.job_id, **reservation.headers}
        if prepared.stream:
            return await job.stream(headers)
        return await job.collect(headers)

    def _observe(self, record: RequestRecord) -> None:
        record.latency = time.monotonic() - record.started
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.exception("request observer failed")


class _Job:
    """One queued job until it ends: relays its events and releases its reservation once."""

    def __init__(
        self,
        serving: Serving,
        run: JobRun,
        reservation: Reservation,
        record: RequestRecord,
        prompt_estimate: int,
    ) -> None:
        self.serving = serving
        self.run = run
        self.reservation = reservation
        self.record = record
        self.prompt_estimate = prompt_estimate
        self.relayed = 0
        self.settled = False

    def settle(self, status: int, done: Done | None = None, code: str | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        record = self.record
        record.status, record.error_code, record.worker = status, code, self.run.worker
        if self.run.first_chunk_at is not None:
            record.ttft = self.run.first_chunk_at - record.started
        if done is not None:
            record.prompt_tokens = done.usage.prompt_tokens
            record.completion_tokens = done.usage.completion_tokens
        else:
            record.prompt_tokens = self.prompt_estimate if self.run.worker else 0
            record.completion_tokens = self.relayed
        usage = JobUsage(record.prompt_tokens, record.completion_tokens, failed=done is None)
        self.serving.reservations.release_later(self.reservation, usage)
        self.serving._observe(record)

    async def collect(self, headers: dict[str, str]) -> Response:
        try:
            async for ev in self.run.events():
                if isinstance(ev, Done):
                    if not ev.body:
                        self.settle(502, code="empty_response")
                        raise ApiError(502, "the worker sent no response body", "empty_response")
                    self.settle(200, ev)
                    return Response(bytes(ev.body), media_type="application/json", headers=headers)
                if isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    return _failed_response(public_failure(ev, self.record.job_id), headers)
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response")
        finally:
            self.settle(499, code="client_closed")

    async def stream(self, headers: dict[str, str]) -> Response:
        events = self.run.events()
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response") from None
        except BaseException:
            self.settle(499, code="client_closed")
            raise
        if isinstance(first, Failed):
            await events.aclose()
            self.settle(first.status, code=first.error.code)
            return _failed_response(public_failure(first, self.record.job_id), headers)
        return SSEResponse(self._relay(first, events), headers)

    async def _relay(
        self, first: Event, events: AsyncGenerator[Event, None]
    ) -> AsyncIterator[bytes]:
        rt = self.serving.rt
        rt.open_streams += 1
        try:
            ev: Event = first
            while True:
                if isinstance(ev, bytes):
                    self.relayed += 1
                    yield b"data: " + ev + b"\n\n"
                elif isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    yield event(error_bytes(public_failure(ev, self.record.job_id).error))
                    break
                else:
                    self.settle(200, ev)
                    break
                try:
                    ev = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield DONE
        finally:
            rt.open_streams -= 1
            self.settle(499, code="client_closed")
            await events.aclose()


def _failed_response(frame: Failed, headers: dict[str, str]) -> Response:
    if frame.retry_after is not None:
        headers = {**headers, "retry-after": str(max(1, round(frame.retry_after)))}
    return error_response(frame.status, frame.error, headers)
