"""`POST /v1/messages/count_tokens`: the upstream's own count when the model is served by an
`anthropic` worker (a `message` job with `Llmq-Message-Op: count_tokens`), else llmq's
estimate (`schemas.messages.estimate_tokens`). It takes no quota and no fair-share place;
`x-llmq-token-count: upstream | estimate` says which answered.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from llmq.api.engine.serving import Serving
from llmq.api.errors import ApiError, public_failure
from llmq.api.listing import ensure_accepting
from llmq.api.messages.protocol import REQUEST_ID, decode, error_response
from llmq.api.protocol import first_token_deadline, read_body
from llmq.dispatcher.dispatch import DispatchError, Event
from llmq.dispatcher.jobs import JobSpec
from llmq.schemas.admission import Refusal
from llmq.schemas.frames import Done, Failed
from llmq.schemas.messages import count_request_decoder, estimate_tokens
from llmq.schemas.openai import patch_body

COUNT_HEADER = "x-llmq-token-count"
_encoder = msgspec.json.Encoder()


async def count_response(serving: Serving, request: Request, request_id: str) -> Response:
    settings = serving.rt.settings
    ensure_accepting(serving.rt)
    caller = await serving.auth.caller(request)
    body = await read_body(request, settings.api.max_body_bytes)
    req = decode(body, count_request_decoder)
    model = serving.preparer.models.resolve(req.model)
    serving.preparer.check_model(model, "message", need_live_worker=False)
    if not caller.may_use(model):
        raise Refusal(403, f"This tenant may not use model `{model}`.", "model_not_allowed")
    headers = {REQUEST_ID: request_id, "x-request-id": request_id}
    workers = serving.rt.registry.workers_for(model)
    if not any(w.backend == "anthropic" for w in workers):
        counted = {"input_tokens": estimate_tokens(req)}
        headers[COUNT_HEADER] = "estimate"
        return Response(_encoder.encode(counted), media_type="application/json", headers=headers)
    wait = first_token_deadline(request, settings.api.deadline, settings.api.max_deadline)
    sent = body if model == req.model else patch_body(body, {"model": model})
    spec = JobSpec(
        job_id=request_id,
        model=model,
        body=sent,
        tenant="",
        deadline_ms=int((time.time() + wait) * 1000),
        kind="message",
        message_op="count_tokens",
        anthropic_version=request.headers.get("anthropic-version", ""),
        anthropic_beta=request.headers.get("anthropic-beta", ""),
    )
    try:
        run = await serving.rt.dispatcher.submit(spec)
    except DispatchError as exc:
        raise ApiError(exc.status, exc.message, exc.code) from None
    end = await _end(run.events())
    if isinstance(end, Failed):
        public = public_failure(end, request_id)
        return error_response(public.status, public.error, request_id)
    if end is None or not end.body:
        raise ApiError(502, "the job ended without a result", "empty_response")
    # the worker says who counted: its upstream, or (a chat backend) llmq's estimate
    headers[COUNT_HEADER] = "estimate" if end.finish_reason == "estimate" else "upstream"
    return Response(bytes(end.body), media_type="application/json", headers=headers)


async def _end(events: AsyncGenerator[Event, None]) -> Done | Failed | None:
    """The job's Done or Failed frame (chunks are none for a count)."""
    try:
        async for ev in events:
            if isinstance(ev, Done | Failed):
                return ev
        return None
    finally:
        await events.aclose()
