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

from starlette.requests import Request
from starlette.responses import Response

from llmq.api.engine.attempt import answer_or_move_on
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.job import QueuedJob
from llmq.api.engine.model_chain import MODEL_HEADER, QUEUE_WAIT, for_model
from llmq.api.engine.reuse import Ask, Plan
from llmq.api.engine.serving import Attempted, Serving
from llmq.api.errors import ApiError, api_error
from llmq.api.fair_share import Ticket
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.api.reservations import end_user
from llmq.api.tracing import begin, mark, traceparent
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.dispatcher.jobs import JobSpec, new_job_id
from llmq.schemas.admission import FAILED, AnyRequest, PreparedRequest, Refusal, Reservation
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
        submitted = time.time()

        def attempt(model: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(request, kind, record, req, body, model, more, submitted, wait)

        return await unless_gone(
            request, self.through_chain(record, requested, attempt, new_job_id)
        )

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
        plan = self._plan(request, kind, record, prepared, model, more)
        served = await plan.served()  # the response cache: a stored answer, a joined job
        if served is not None:
            return served
        rank = await self.auth.rank(request)  # before the queue checks: no await between
        if more and self.router.over_queue_wait(model):  # them and the fair-share ticket
            return QUEUE_WAIT, None
        full = self.router.admit(model, submitted + wait - time.time())
        if full is not None:
            if more:
                return QUEUE_WAIT, full
            raise full
        record.stream = prepared.stream
        mark(record.trace, "prepared")
        held = await self.hold(
            model, record, submitted + wait - time.time(), rank,
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
        run = plan.lead(run)
        mark(record.trace, "published", run)
        job = QueuedJob(self, run, reservation, record, prepared.prompt_estimate, ticket)
        headers = {"x-request-id": record.job_id, MODEL_HEADER: model, **reservation.headers,
                   **plan.headers}  # fmt: skip
        return await answer_or_move_on(self, job, model, prepared.stream, more, headers)

    def _plan(
        self,
        request: Request,
        kind: JobKind,
        record: RequestRecord,
        prepared: PreparedRequest,
        model: str,
        more: bool,
    ) -> Plan:
        """The attempt as the response cache (`Serving.reuse`) sees it."""

        def make_job(run: JobRun, reservation: Reservation, ticket: Ticket) -> QueuedJob:
            return QueuedJob(self, run, reservation, record, prepared.prompt_estimate, ticket)

        return self.reuse.plan(self, Ask(
            request=request, record=record, kind=kind, model=prepared.model,
            body=prepared.body, stream=prepared.stream, estimate=prepared.prompt_estimate,
            max_tokens=prepared.max_tokens, user=end_user(prepared.request),
            make_job=make_job, more=more,
            headers={"x-request-id": record.job_id, MODEL_HEADER: model},
        ))  # fmt: skip
