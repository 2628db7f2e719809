"""Serving `POST /v1/responses`: authenticate, rebuild the history, reserve, queue a
`response` job, relay it, store it.

The job body is the client's request with only what llmq must change: the resolved model,
`input` expanded with the history of `previous_response_id` or `conversation` (so a worker
and its upstream never need llmq's store), and `conversation` in its object form. A
background response is an async job on the durable queue (`dispatcher/batch/async_jobs`):
its record here says `queued` until a read finds its result (`response_records`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.batch.wing import BatchWing
from llmq.api.engine.attempt import answer_or_move_on
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.model_chain import MODEL_HEADER, QUEUE_WAIT
from llmq.api.engine.reuse import Ask, Plan
from llmq.api.engine.serving import Attempted, Serving
from llmq.api.errors import ApiError
from llmq.api.fair_share import Ticket
from llmq.api.listing import ensure_accepting, not_found
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.api.responses.conversation_store import ConversationStore
from llmq.api.responses.conversations import ConversationsServing
from llmq.api.responses.finisher import ResponseFinisher
from llmq.api.responses.input_files import inline_files
from llmq.api.responses.items import as_items, for_model
from llmq.api.responses.keeper import Keeper, NoKeeper
from llmq.api.responses.records import ResponseRecords, public_hex
from llmq.api.responses.references import resolve
from llmq.api.responses.relay import ResponseRun
from llmq.api.responses.stored_bytes import MeteredStore
from llmq.api.responses.tools import apply_builtin_policy, omitted_header
from llmq.api.tenancy import TenantStore
from llmq.api.tenancy.models import NORMAL_RANK
from llmq.api.tenancy.stored_bytes import StoredBytes
from llmq.api.tenant_scope import TenantScopes
from llmq.dispatcher import streams
from llmq.dispatcher.batch.async_jobs import AsyncJobs
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.records import time_hex
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.dispatcher.jobs import JobSpec
from llmq.schemas import names
from llmq.schemas.admission import FAILED, AnyRequest, PreparedRequest, Refusal, Reservation
from llmq.schemas.responses import (
    CONVERSATION_PREFIX,
    RESPONSE_PREFIX,
    Item,
    ResponseRequest,
    StoredResponse,
    response_request_decoder,
    skeleton,
)

_encoder = msgspec.json.Encoder()
_fields = msgspec.json.Decoder(dict[str, Any])


async def open_responses(
    serving: Serving, wing: BatchWing
) -> tuple[ResponsesServing, ConversationsServing]:
    """Provision the buckets (again after a reconnect) and build both serving modules."""
    rt = serving.rt

    retention = rt.settings.batch.response_retention
    stored = StoredBytes(rt.redis, retention)
    wing.file_serving.stored = stored  # files and these share the storage quota

    async def provision() -> MeteredStore:
        buckets = await streams.responses_buckets(
            rt.js, retention, rt.settings.protocol.nats_replicas,
            rt.settings.connection.nats_provision,
        )  # fmt: skip
        return MeteredStore(
            buckets[names.RESPONSES_BUCKET], buckets[names.CONVERSATIONS_BUCKET], stored,
            wing.file_serving.room_left,
        )  # fmt: skip

    store = await provision()
    rt.provisioner.add("responses buckets", provision)
    scopes = TenantScopes(TenantStore(rt.redis))
    responses = ResponsesServing(serving, store, wing.jobs, scopes)
    responses.files = wing.files
    wing.purgers.append(store.purge)  # a deleted tenant's responses and conversations
    responses.finisher.start()
    return responses, ConversationsServing(store)


class ResponsesServing:
    def __init__(
        self, serving: Serving, store: ConversationStore, jobs: AsyncJobs, scopes: TenantScopes
    ) -> None:
        """Responses, conversations and background jobs are stored under the tenant's scope
        (`api.tenant_scope`); quotas are held by its name."""
        self.serving = serving
        self.scopes = scopes
        self.store = store
        self.jobs = jobs
        self.records = ResponseRecords(store, jobs)
        self.finisher = ResponseFinisher(self.records, jobs.jobs)
        self.files: FileStore | None = None
        """The tenant files `input_file` parts may name (set once the batch wing runs)."""

    async def stop(self) -> None:
        await self.finisher.stop()

    async def create(self, request: Request) -> Response:
        serving, settings = self.serving, self.serving.rt.settings
        ensure_accepting(serving.rt)
        record = RequestRecord(job_id=time_hex(), route="response")
        record.tenant = tenant = await serving.auth.tenant(request)
        scope = await self.scopes.of(tenant)
        wait = first_token_deadline(request, settings.api.deadline, settings.api.max_deadline)
        body = await read_body(request, settings.api.max_body_bytes)
        req, fields = _decode(body)
        _check(req)
        record.model = model = serving.preparer.models.resolve(req.model)
        # A worker serves a Responses job on its chat path: any chat model serves it. A
        # model without a live worker may still fall back (`_attempt` looks again).
        live = not req.in_background and not serving.router.models.fallbacks_for(model)
        fast = live and serving.preparer.fails_fast(model)
        serving.preparer.check_model(model, "chat", need_live_worker=fast)
        policy = serving.preparer.models.builtin_tools_for(model)
        omitted = apply_builtin_policy(fields, policy, model)
        record.omitted = [kind for _param, kind in omitted]
        history, conversation = await self._history(scope, req)
        raw = req.input if isinstance(req.input, str | list) else None
        items = await resolve(self.store, scope, as_items(raw, references=True), history)
        context = history + items
        fields["model"], fields["input"] = model, for_model(context)
        if self.files is not None:
            await inline_files(self.files, scope, fields["input"], settings.api.max_body_bytes)
        if conversation is not None:
            fields["conversation"] = {"id": CONVERSATION_PREFIX + conversation}
        if req.in_background:
            fields["stream"] = False
        limit = req.max_output_tokens if isinstance(req.max_output_tokens, int) else None
        ask = _Ask(
            req, fields, scope, items, context, conversation, _estimate(fields),
            limit or settings.tenancy.default_max_tokens, time.time(), wait,
            headers=omitted_header(omitted),
        )  # fmt: skip
        if req.in_background:
            return await self._background(request, record, ask)
        record.stream = req.stream
        ask.rank = await serving.auth.rank(request)

        def attempt(name: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(request, record, ask, name, more)

        chain = serving.through_chain(record, model, attempt, time_hex, RESPONSE_PREFIX)
        return await unless_gone(request, chain)

    async def _background(self, request: Request, record: RequestRecord, ask: _Ask) -> Response:
        """Queued on the durable queue for later, on the requested model (no fallbacks)."""
        serving, model = self.serving, record.model
        reservation = await serving.reservations.reserve(
            record.tenant, model, ask.estimate, ask.max_tokens, record.job_id,
            key_id=serving.auth.key_id(request),
        )  # fmt: skip
        if isinstance(reservation, Refusal):
            raise reservation
        stored = self._stored(record.job_id, ask)
        stored.response["status"] = "queued"
        await self.store.put_response(stored)
        # the async-job machinery reads only model, body and kind
        prepared = PreparedRequest(
            cast(AnyRequest, ask.req),
            model,
            _encoder.encode(ask.fields),
            "response",
            False,
            ask.estimate,
            ask.max_tokens,
        )
        try:
            await self.jobs.submit(
                record.job_id, ask.scope, prepared,
                deadline=serving.rt.settings.batch.job_deadline,
                traceparent=request.headers.get("traceparent"),
            )  # fmt: skip
        except DispatchError as exc:
            serving.reservations.release_later(reservation, FAILED)
            await self.store.delete_response(ask.scope, record.job_id)
            raise ApiError(exc.status, exc.message, exc.code) from None
        headers = {
            "x-request-id": RESPONSE_PREFIX + record.job_id,
            **reservation.headers,
            **ask.headers,
        }
        return Response(
            _encoder.encode(stored.response), media_type="application/json", headers=headers
        )

    def _stored(self, job_id: str, ask: _Ask) -> StoredResponse:
        return StoredResponse(
            id=job_id,
            tenant=ask.scope,
            created_at=time.time(),
            response=skeleton(ask.fields, RESPONSE_PREFIX + job_id, int(time.time())),
            input_items=ask.items,
            context=ask.context,
            background=ask.req.in_background,
            conversation=ask.conversation,
        )

    async def _attempt(
        self, request: Request, record: RequestRecord, ask: _Ask, model: str, more: bool
    ) -> Attempted:
        """Try one model of the chain (as `ChatServing._attempt` does for chat): its response,
        or why to move on (a fallback cause, None for a fallback this request cannot use)
        and the failure the client would see."""
        serving, router = self.serving, self.serving.router
        fallback = model != record.model
        try:
            live = serving.preparer.fails_fast(model, live_now=more or fallback)
            serving.preparer.check_model(model, "chat", need_live_worker=live)
        except Refusal as refusal:
            if refusal.code == "no_worker" and more:
                return router.unavailable_cause(model), refusal
            if fallback:  # a fallback unknown here or unable to take this request
                return None, None
            raise
        ask.fields["model"] = model
        body = _encoder.encode(ask.fields)
        plan = self._plan(request, record, ask, model, body, more)
        served = await plan.served()  # the response cache: a stored answer, a joined job
        if served is not None:
            return served
        if more and router.over_queue_wait(model):
            return QUEUE_WAIT, None
        full = router.admit(model, ask.time_left())
        if full is not None:
            if more:
                return QUEUE_WAIT, full
            raise full
        held = await serving.hold(
            model, record, ask.time_left(), ask.rank, quota_model=model, estimate=ask.estimate,
            max_tokens=ask.max_tokens, key_id=serving.auth.key_id(request), fallback=fallback,
        )  # fmt: skip
        if held is None:
            return None, None
        ticket, reservation = held
        spec = JobSpec(
            job_id=record.job_id,
            model=model,
            body=body,
            tenant=record.tenant,
            deadline_ms=int((ask.submitted + ask.wait) * 1000),
            kind="response",
            traceparent=request.headers.get("traceparent"),
            end_ms=int((ask.submitted + serving.rt.settings.api.max_deadline) * 1000),
            stream=ask.req.stream,
        )
        try:
            run = await serving.rt.dispatcher.submit(spec)
        except DispatchError as exc:
            ticket.leave()
            serving.reservations.release_later(reservation, FAILED)
            raise ApiError(exc.status, exc.message, exc.code, headers=reservation.headers) from None
        run.on_taken = ticket.leave
        run = plan.lead(run)
        stored = self._stored(record.job_id, ask)

        keeper = Keeper(self.records, stored, ask.req.stores)
        job = ResponseRun(serving, run, reservation, record, ask.estimate, ticket, keeper)
        headers = {
            "x-request-id": RESPONSE_PREFIX + record.job_id, MODEL_HEADER: model,
            **reservation.headers, **plan.headers, **ask.headers,
        }  # fmt: skip
        return await answer_or_move_on(serving, job, model, ask.req.stream, more, headers)

    def _plan(
        self,
        request: Request,
        record: RequestRecord,
        ask: _Ask,
        model: str,
        body: bytes,
        more: bool,
    ) -> Plan:
        """The attempt as the response cache (`Serving.reuse`) sees it."""
        serving = self.serving

        def make_job(run: JobRun, reservation: Reservation, ticket: Ticket) -> ResponseRun:
            # a cached or joined answer is never stored as a response
            return ResponseRun(serving, run, reservation, record, ask.estimate, ticket, NoKeeper())

        headers = {"x-request-id": RESPONSE_PREFIX + record.job_id, MODEL_HEADER: model}
        return serving.reuse.plan(serving, Ask(
            request=request, record=record, kind="response", model=model, body=body,
            stream=ask.req.stream, estimate=ask.estimate, max_tokens=ask.max_tokens, user="",
            make_job=make_job, more=more, headers=headers,
        ))  # fmt: skip

    async def _history(self, scope: str, req: ResponseRequest) -> tuple[list[Item], str | None]:
        """The items before this request's input, and the conversation (hex) it continues."""
        previous, conversation = req.previous_id, req.conversation_id
        if previous is not None:
            found = await self.records.stored(scope, previous, "previous_response_id")
            if found.response.get("status") not in ("completed", "incomplete"):
                raise ApiError(
                    400,
                    f"previous response `{previous}` has not finished",
                    "previous_response_not_finished",
                    param="previous_response_id",
                )
            return [*found.context, *found.response.get("output", [])], None
        if conversation is not None:
            hex_id = public_hex(conversation, CONVERSATION_PREFIX)
            conv = await self.store.get_conversation(scope, hex_id) if hex_id else None
            if conv is None:
                raise not_found("conversation", conversation, param="conversation")
            return list(conv.items), conv.id
        return [], None


@dataclass(slots=True)
class _Ask:
    """One interactive or background Responses request, as every attempt sends it."""

    req: ResponseRequest
    fields: dict[str, Any]
    """The job body's fields; `model` is set to the model of each attempt."""
    scope: str
    items: list[Item]
    context: list[Item]
    conversation: str | None
    estimate: int
    max_tokens: int
    submitted: float
    wait: float
    """Seconds from `submitted` to the first-token deadline, for every attempt."""
    rank: int = NORMAL_RANK
    headers: dict[str, str] = field(default_factory=dict)
    """Headers every answer carries (`x-llmq-omitted`)."""

    def time_left(self) -> float:
        return self.submitted + self.wait - time.time()


def _decode(body: bytes) -> tuple[ResponseRequest, dict[str, Any]]:
    if not body:
        raise Refusal(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        return response_request_decoder.decode(body), _fields.decode(body)
    except msgspec.ValidationError as exc:
        raise Refusal(400, str(exc), "invalid_request") from None
    except msgspec.DecodeError as exc:
        raise Refusal(400, f"malformed JSON: {exc}", "invalid_json") from None


def _check(req: ResponseRequest) -> None:
    if req.previous_id is not None and req.conversation_id is not None:
        raise ApiError(
            400,
            "`previous_response_id` and `conversation` cannot be used together",
            "invalid_request",
            param="conversation",
        )
    if req.conversation is not None and req.conversation is not msgspec.UNSET:
        if req.conversation_id is None:
            raise ApiError(400, "invalid `conversation`", "invalid_request", param="conversation")
    if req.in_background and req.stream:
        raise ApiError(
            400,
            "streaming a background response is not supported; poll it instead",
            "unsupported_parameter",
            param="stream",
        )
    if req.in_background and not req.stores:
        raise ApiError(
            400, "a background response must be stored", "invalid_request", param="store"
        )
    empty = req.input in ("", [], msgspec.UNSET, None)
    if empty and req.previous_id is None and req.conversation_id is None:
        raise ApiError(400, "`input` is required", "invalid_request", param="input")


def _estimate(fields: dict[str, Any]) -> int:
    """A high guess of the prompt tokens (see `preparation.estimate_prompt_tokens`)."""
    text = _encoder.encode([fields.get("instructions"), fields.get("input"), fields.get("tools")])
    return len(text) // 3 + 1
