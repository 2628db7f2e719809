"""Serving an OpenAI request through the job queue: authenticate, route, reserve, submit,
relay — and release its reservation exactly once however it ends.

Transport-free: routes hand in the request; this module decides the job and turns its
events into a JSON response or an SSE stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.attempt import answer_or_move_on
from llmq.api.auth import Authenticator
from llmq.api.errors import ApiError, api_error, error_bytes, error_response, public_failure
from llmq.api.fair_share import FairShare, Ticket
from llmq.api.preparation import RequestPreparer
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.api.reservations import Reservations, end_user
from llmq.api.routing import (
    MODEL_HEADER,
    QUEUE_WAIT,
    Router,
    for_model,
)  # fmt: skip
from llmq.api.runtime import Runtime
from llmq.api.sse import DONE, SSEResponse, event
from llmq.api.tracing import begin, mark, traceparent
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.dispatcher.jobs import JobSpec, new_job_id
from llmq.schemas.admission import FAILED, AnyRequest, JobUsage, Refusal, Reservation
from llmq.schemas.envelope import JobKind
from llmq.schemas.frames import CHUNK_SEPARATOR, Done, Failed
from llmq.schemas.usage import cache_counts

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

Event = bytes | Done | Failed
Attempted = Response | tuple[str | None, Refusal | Failed | None]
"""One model's attempt: the response, or (the fallback cause, the failure) to move on."""
T = TypeVar("T")
_NOT_UNDER_WAY = "the job's deadline passed before it was under way"


Observer = Callable[[RequestRecord], None]


class Serving:
    def __init__(
        self,
        runtime: Runtime,
        auth: Authenticator,
        reservations: Reservations,
        preparer: RequestPreparer,
        observers: list[Observer] | None = None,
        router: Router | None = None,
    ) -> None:
        self.rt = runtime
        self.auth = auth
        self.reservations = reservations
        self.preparer = preparer
        self.router = router if router is not None else Router(preparer.models, runtime.registry)
        self.fair = FairShare.shared(runtime.registry, runtime.redis, self.router.estimate)
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
        requested = self.preparer.models.resolve(req.model)
        record.model = requested
        submitted = time.time()

        def attempt(model: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(request, kind, record, req, body, model, more, submitted, wait)

        return await self.through_chain(record, requested, attempt, new_job_id)

    async def through_chain(
        self,
        record: RequestRecord,
        requested: str,
        attempt: Callable[[str, bool], Awaitable[Attempted]],
        new_id: Callable[[], str],
        id_prefix: str = "",
    ) -> Response:
        """`attempt(model, more)` on each model of `requested`'s fallback chain in turn (a
        new job id for each after the first) until one answers; then the last failure, in
        OpenAI's shape, or why no model could take the request. Chat and Responses."""
        chain = self.router.chain(requested)
        last: Refusal | Failed | None = None
        """What the client hears if no model of the chain serves it."""
        for index, model in enumerate(chain):
            more = index + 1 < len(chain)
            if index:
                record.job_id = new_id()
            outcome = await attempt(model, more)
            if isinstance(outcome, Response):
                return outcome
            cause, failure = outcome
            if failure is not None:
                last = failure
            if cause is not None and more:
                record.fallbacks.append((model, chain[index + 1], cause))
        if isinstance(last, Failed):
            record.status, record.error_code = last.status, last.error.code
            self._observe(record)
            headers = {"x-request-id": id_prefix + record.job_id}
            return _failed_response(public_failure(last, record.job_id), headers)
        if last is None:  # every fallback was unusable for this request
            last = Refusal(503, f"no live worker serves model `{requested}`", "no_worker",
                           param="model")  # fmt: skip
        raise last

    async def _attempt(
        self,
        request: Request,
        kind: JobKind,
        record: RequestRecord,
        req: AnyRequest,
        body: bytes,
        model: str,
        more: bool,
        submitted: float,
        wait: float,
    ) -> Attempted:
        """Try one model of the chain: its response, or why to move on (a fallback cause,
        None for a fallback this request cannot use) and the failure the client would see."""
        fallback = model != record.model
        try:
            sent, sent_body = for_model(req, body, model) if fallback else (req, body)
            # waits for a worker only as the last model left and the one asked for
            live_now = more or fallback
            prepared = self.preparer.prepare_decoded(sent, kind, sent_body, live_now=live_now)
        except Refusal as refusal:
            if refusal.code == "no_worker" and more:
                return self.router.unavailable_cause(model), refusal
            if fallback:  # a fallback unknown here or unable to take this request
                return None, None
            raise
        if more and self.router.over_queue_wait(model):
            return QUEUE_WAIT, None
        full = self.router.admit(model, submitted + wait - time.time())
        if full is not None:
            if more:
                return QUEUE_WAIT, full
            raise full
        record.stream = prepared.stream
        mark(record.trace, "prepared")
        held = await self.hold(
            model, record, submitted + wait - time.time(), await self.auth.rank(request),
            quota_model=prepared.model, estimate=prepared.prompt_estimate,
            max_tokens=prepared.max_tokens, key_id=self.auth.key_id(request),
            user=end_user(prepared.request), fallback=fallback,
        )  # fmt: skip
        if held is None:
            return None, None
        ticket, reservation = held
        mark(record.trace, "quota")
        spec = JobSpec(
            job_id=record.job_id,
            model=prepared.model,
            body=prepared.body,
            tenant=record.tenant,
            deadline_ms=int((submitted + wait) * 1000),
            kind=kind,
            traceparent=traceparent(record.trace, request.headers.get("traceparent")),
            end_ms=int((submitted + self.rt.settings.api.max_deadline) * 1000),
            stream=prepared.stream,
        )
        mark(record.trace, "submitted")
        try:
            run = await self.rt.dispatcher.submit(spec)
        except BaseException as exc:
            ticket.leave()
            self.reservations.release_later(reservation, FAILED)
            if isinstance(exc, DispatchError):
                raise ApiError(
                    exc.status, exc.message, exc.code, headers=reservation.headers
                ) from None
            raise
        run.on_taken = ticket.leave
        mark(record.trace, "published", run)
        job = _Job(self, run, reservation, record, prepared.prompt_estimate, ticket)
        headers = {"x-request-id": record.job_id, MODEL_HEADER: model, **reservation.headers}
        return await answer_or_move_on(self, job, model, prepared.stream, more, headers)

    async def hold(
        self,
        model: str,
        record: RequestRecord,
        time_left: float,
        rank: int,
        *,
        quota_model: str,
        estimate: int,
        max_tokens: int,
        key_id: str,
        user: str = "",
        fallback: bool,
    ) -> tuple[Ticket, Reservation] | None:
        """A place in `model`'s fair-share line and the quota of one attempt (chat and the
        Responses API). None when a fallback model is refused (its limits are never a way
        around the tenant's own: the chain moves on); for the requested model the refusal
        is raised, and a place that did not come within `time_left` is a 504."""
        ticket = await self.fair.enter(model, record.tenant, time_left, rank)
        if ticket is None:
            raise ApiError(504, _NOT_UNDER_WAY, "deadline_exceeded", type="timeout")
        try:
            reservation = await self.reservations.reserve(
                record.tenant, quota_model, estimate, max_tokens, record.job_id,
                key_id=key_id, user=user,
            )  # fmt: skip
        except BaseException:
            ticket.leave()
            raise
        if isinstance(reservation, Refusal):
            ticket.leave()
            if fallback:
                return None
            raise reservation
        return ticket, reservation

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
        ticket: Ticket,
    ) -> None:
        self.serving = serving
        self.ticket = ticket
        self.run = run
        self.reservation = reservation
        self.record = record
        self.prompt_estimate = prompt_estimate
        self.relayed = 0
        self.settled = False

    def settle(
        self, status: int, done: Done | None = None, code: str | None = None, observe: bool = True
    ) -> None:
        """End the job's reservation once; `observe`: the request ends with it (False when
        it moves on to a fallback model)."""
        if self.settled:
            return
        self.settled = True
        self.ticket.leave()
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
        cached, written = cache_counts(done.usage) if done is not None else (0, 0)
        usage = JobUsage(
            record.prompt_tokens, record.completion_tokens, failed=done is None,
            cached_tokens=cached, cache_write_tokens=written,
        )  # fmt: skip
        self.serving.reservations.release_later(self.reservation, usage)
        if observe:
            self.serving._observe(record)

    async def outcome(self) -> Done | Failed | None:
        """A whole (not streamed) job's end; None when it ended without one."""
        events = self.run.events()
        try:
            async for ev in events:
                if isinstance(ev, Done | Failed):
                    return ev
            return None
        except BaseException:
            self.settle(499, code="client_closed")
            raise
        finally:
            await events.aclose()

    def respond(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        if isinstance(ev, Failed):
            self.settle(ev.status, code=ev.error.code)
            return _failed_response(public_failure(ev, self.record.job_id), headers)
        if ev is None or not ev.body:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response")
        self.settle(200, ev)
        return Response(bytes(ev.body), media_type="application/json", headers=headers)

    async def answer(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        """The non-streamed response (the Responses API stores it first)."""
        return self.respond(ev, headers)

    async def first(self) -> tuple[Event, AsyncGenerator[Event, None]]:
        """A stream's first event (a chunk, or how it ended before one) and the rest."""
        events = self.run.events()
        try:
            return await events.__anext__(), events
        except StopAsyncIteration:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response") from None
        except BaseException:
            self.settle(499, code="client_closed")
            await events.aclose()
            raise

    async def stream(
        self, first: Event, events: AsyncGenerator[Event, None], headers: dict[str, str]
    ) -> Response:
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
                    # a frame may carry several chunks (`Llmq-Chunks`), one estimated token each
                    self.relayed += ev.count(CHUNK_SEPARATOR) + 1
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
