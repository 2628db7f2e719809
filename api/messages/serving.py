"""Serving `POST /v1/messages` and `POST /v1/messages/count_tokens` (Anthropic's Messages
API) through the same path as chat: authenticate, resolve the model (aliases, defaults),
check the request before any quota, then for each model of the fallback chain the response
cache, the queue-aware admission, the fair-share place and the reservation (`Serving.place`), a
`message` job, and the relay (`relay.MessageRun`). Errors leave in Anthropic's shape
(`protocol`).

The job body is the client's JSON; only `model` (an alias resolved, a fallback) and the
model table's default `temperature` are patched in, every other byte stays as it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.engine.attempt import queue_and_answer
from llmq.api.engine.disconnect import unless_gone
from llmq.api.engine.model_chain import MODEL_HEADER
from llmq.api.engine.reuse import Ask
from llmq.api.engine.serving import Attempted, Held, Serving
from llmq.api.errors import ApiError
from llmq.api.listing import ensure_accepting
from llmq.api.messages.counting import count_response
from llmq.api.messages.protocol import (
    REQUEST_ID,
    anthropic_shaped,
    check_max_tokens,
    decode,
    error_response,
    from_exception,
)
from llmq.api.messages.relay import MessageRun
from llmq.api.model_table import ModelDefaults
from llmq.api.protocol import first_token_deadline, read_body
from llmq.api.request_record import RequestRecord
from llmq.api.tenancy.models import NORMAL_RANK
from llmq.dispatcher.jobs import new_job_id
from llmq.dispatcher.publish import transient
from llmq.schemas.admission import Refusal
from llmq.schemas.messages import (
    MessageRequest,
    estimate_tokens,
    message_request_decoder,
)
from llmq.schemas.openai import ErrorBody, patch_body

log = logging.getLogger(__name__)

FORWARDED = ("anthropic-version", "anthropic-beta")
"""The client's headers an Anthropic upstream gets (no other header of the client's)."""
_FORWARDED = frozenset(name.encode() for name in FORWARDED)


@dataclass(slots=True)
class _Ask:
    """One Messages request, as every attempt of the fallback chain sends it."""

    req: MessageRequest
    body: bytes
    estimate: int
    submitted: float
    wait: float
    headers: dict[str, str]
    max_tokens: int = 0
    rank: int = NORMAL_RANK

    def time_left(self) -> float:
        return self.submitted + self.wait - time.time()

    def body_for(self, model: str, defaults: ModelDefaults | None) -> bytes:
        """The job body for `model`: the client's bytes, with `model` and the model table's
        defaults for fields the request left out patched in."""
        changes: dict[str, object] = {}
        if model != self.req.model:
            changes["model"] = model
        if defaults is not None and defaults.temperature is not None:
            if self.req.temperature is msgspec.UNSET:
                changes["temperature"] = defaults.temperature
        return patch_body(self.body, changes) if changes else self.body


class MessagesServing:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    async def create(self, request: Request) -> Response:
        record = RequestRecord(job_id=new_job_id(), route="message")
        try:
            response = await self._create(request, record)
        except (ApiError, Refusal) as exc:
            record.status, record.error_code = exc.status, exc.code
            self.serving.observe(record)  # refused before any job: metrics, request log
            return from_exception(exc, record.job_id)
        except Exception as exc:
            return _unexpected(exc, record.job_id)
        return anthropic_shaped(response, record.job_id)

    async def count_tokens(self, request: Request) -> Response:
        request_id = new_job_id()
        try:
            return await count_response(self.serving, request, request_id)
        except (ApiError, Refusal) as exc:
            return from_exception(exc, request_id)
        except Exception as exc:
            return _unexpected(exc, request_id)

    async def _create(self, request: Request, record: RequestRecord) -> Response:
        serving, settings = self.serving, self.serving.rt.settings
        ensure_accepting(serving.rt)
        record.tenant = await serving.auth.tenant(request)
        wait = first_token_deadline(request, settings.api.deadline, settings.api.max_deadline)
        body = await read_body(request, settings.api.max_body_bytes)
        req = decode(body, message_request_decoder)
        models = serving.preparer.models
        record.model = model = models.resolve(req.model)
        limit = check_max_tokens(req.max_tokens, models.token_limit_for(model) or _ceiling(serving))
        forwarded = _forwarded(request)
        ask = _Ask(req, body, estimate_tokens(req), time.time(), wait, forwarded, limit)
        record.stream = req.stream
        ask.rank = await serving.auth.rank(request)

        def attempt(name: str, more: bool) -> Awaitable[Attempted]:
            return self._attempt(request, record, ask, name, more)

        return await unless_gone(request, serving.through_chain(record, model, attempt, new_job_id))

    async def _attempt(
        self, request: Request, record: RequestRecord, ask: _Ask, model: str, more: bool
    ) -> Attempted:
        """One model of the chain (as `ChatServing._attempt` for chat): its response, or why to
        move on and the failure the client would see."""
        serving = self.serving
        fallback = model != record.model
        try:
            serving.preparer.check_model(model, "message", need_live_worker=True)
        except Refusal as refusal:
            return serving.refused(model, more, fallback, refusal)
        body = ask.body_for(model, serving.preparer.models.defaults_for(model))
        job_ask = self._job_ask(request, record, ask, model, body, more=more)
        placed = await serving.place(job_ask, ask.rank, ask.time_left)
        if not isinstance(placed, Held):
            return placed
        spec = serving.job_spec(
            job_ask, ask.submitted, ask.wait, request.headers.get("traceparent")
        )
        spec.anthropic_version = ask.headers.get("anthropic-version", "")
        spec.anthropic_beta = ask.headers.get("anthropic-beta", "")
        return await queue_and_answer(serving, job_ask, placed, spec)

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
        headers = {"x-request-id": record.job_id, REQUEST_ID: record.job_id, MODEL_HEADER: model}
        return Ask(
            request=request,
            record=record,
            kind="message",
            model=model,
            body=body,
            stream=ask.req.stream,
            estimate=ask.estimate,
            max_tokens=ask.max_tokens,
            user=ask.req.user,
            make_job=MessageRun.maker(self.serving, record, ask.estimate),
            more=more,
            headers=headers,
        )


def _forwarded(request: Request) -> dict[str, str]:
    """The client's `FORWARDED` headers (the first of each), in one pass over its headers."""
    found: dict[str, str] = {}
    for name, value in request.headers.raw:
        if name in _FORWARDED:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _ceiling(serving: Serving) -> int:
    """The largest `max_tokens` of a model whose table entry sets none."""
    return serving.preparer.max_output_tokens


def _unexpected(exc: Exception, request_id: str) -> Response:
    """A failure of llmq's own, in Anthropic's shape: NATS electing a leader is a 529 worth
    retrying, anything else a 500."""
    if transient(exc):
        body = ErrorBody(message="the job queue did not answer in time; retry", type="")
        return error_response(503, body, request_id)
    log.error("message request %s failed", request_id, exc_info=exc)
    return error_response(500, ErrorBody(message="internal error", type=""), request_id)
