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

from llmq.api.batch import stores
from llmq.api.batch.wing import BatchWing
from llmq.api.engine.attempt import queue_and_answer
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.model_chain import MODEL_HEADER
from llmq.api.engine.reuse import Ask
from llmq.api.engine.serving import Attempted, Held, Serving
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
from llmq.api.responses.keeper import Keeper
from llmq.api.responses.protocol import check_request, decode_request, estimate_prompt
from llmq.api.responses.records import ResponseRecords, public_hex
from llmq.api.responses.references import resolve
from llmq.api.responses.relay import ResponseRun
from llmq.api.responses.stored_bytes import MeteredStore
from llmq.api.responses.tools import apply_builtin_policy, omitted_header
from llmq.api.tenancy import TenantStore
from llmq.api.tenancy.models import NORMAL_RANK
from llmq.api.tenancy.stored_bytes import StoredBytes
from llmq.api.tenant_scope import TenantScopes
from llmq.dispatcher.batch.async_jobs import AsyncJobs
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.records import time_hex
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.schemas import names
from llmq.schemas.admission import FAILED, AnyRequest, PreparedRequest, Refusal, Reservation
from llmq.schemas.responses import (
    CONVERSATION_PREFIX,
    RESPONSE_PREFIX,
    Item,
    ResponseRequest,
    StoredResponse,
    skeleton,
)

_encoder = msgspec.json.Encoder()


async def open_responses(
    serving: Serving, wing: BatchWing
) -> tuple[ResponsesServing, ConversationsServing]:
    """Provision the buckets (again after a reconnect) and build both serving modules."""
    rt = serving.rt

    retention = rt.settings.batch.response_retention
    stored = StoredBytes(rt.redis, retention)
    wing.file_serving.stored = stored  # files and these share the storage quota

    async def provision() -> MeteredStore:
        buckets = await stores.responses_buckets(
            rt.js,
            retention,
            rt.settings.protocol.nats_replicas,
            rt.settings.connection.nats_provision,
            limits=rt.settings.storage,
        )
        return MeteredStore(
            buckets[names.RESPONSES_BUCKET],
            buckets[names.CONVERSATIONS_BUCKET],
            stored,
            wing.file_serving.room_left,
        )

    store = await provision()
    rt.provisioner.add("responses buckets", provision)
    scopes = TenantScopes(TenantStore(rt.redis))
    responses = ResponsesServing(serving, store, wing.jobs, scopes)
    responses.files = wing.files
    wing.purgers.append(store.purge)  # a deleted tenant's responses and conversations
    responses.finisher.start()
    return responses, ConversationsServing(store, lambda: int(rt.nc.max_payload))


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
        req, fields = decode_request(body)
        check_request(req)
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
            req,
            fields,
            scope,
            items,
            context,
            conversation,
            estimate_prompt(fields),
            limit or settings.tenancy.default_max_tokens,
            time.time(),
            wait,
            headers=omitted_header(omitted),
        )
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
            record.tenant,
            model,
            ask.estimate,
            ask.max_tokens,
            record.job_id,
            key_id=serving.auth.key_id(request),
        )
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
                record.job_id,
                ask.scope,
                prepared,
                deadline=serving.rt.settings.batch.job_deadline,
                traceparent=request.headers.get("traceparent"),
            )
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
        serving = self.serving
        fallback = model != record.model
        try:
            live = serving.preparer.fails_fast(model, live_now=more or fallback)
            serving.preparer.check_model(model, "chat", need_live_worker=live)
        except Refusal as refusal:
            return serving.refused(model, more, fallback, refusal)
        ask.fields["model"] = model
        body = _encoder.encode(ask.fields)
        job_ask = self._job_ask(request, record, ask, model, body, more=more)
        placed = await serving.place(job_ask, ask.rank, ask.time_left)
        if not isinstance(placed, Held):
            return placed
        incoming = request.headers.get("traceparent")
        spec = serving.job_spec(job_ask, ask.submitted, ask.wait, incoming)

        def kept(run: JobRun, reservation: Reservation, ticket: Ticket) -> ResponseRun:
            job: ResponseRun = job_ask.make_job(run, reservation, ticket)
            job.keeper = Keeper(self.records, self._stored(record.job_id, ask), ask.req.stores)
            return job

        return await queue_and_answer(serving, job_ask, placed, spec, kept)

    def _job_ask(
        self,
        request: Request,
        record: RequestRecord,
        ask: _Ask,
        model: str,
        body: bytes,
        *,
        more: bool,
    ) -> Ask:
        """The attempt as the response cache and the quota (`Serving.place`) see it."""
        # a hit or a join names what was omitted as this request's own answer would
        headers = {
            "x-request-id": RESPONSE_PREFIX + record.job_id,
            MODEL_HEADER: model,
            **ask.headers,
        }
        return Ask(
            request=request,
            record=record,
            kind="response",
            model=model,
            body=body,
            stream=ask.req.stream,
            estimate=ask.estimate,
            max_tokens=ask.max_tokens,
            user="",
            # a cached or joined answer is never stored as a response (no `keeper`)
            make_job=ResponseRun.maker(self.serving, record, ask.estimate),
            more=more,
            headers=headers,
        )

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
