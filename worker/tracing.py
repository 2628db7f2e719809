"""W3C trace context from the job to the upstream call.

The api copies the client's `traceparent` header into the job's NATS headers; the job
runner puts it in `TRACEPARENT` for the task that runs the job, and the HTTP backends'
client adds it to every upstream request made from that task (an httpx request hook), so
one trace spans client, api, worker and model server.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

import httpx

from llmq.dispatcher import otel as llmq_otel

TRACEPARENT: ContextVar[str | None] = ContextVar("llmq_traceparent", default=None)

_VALID = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is well-formed (version-traceid-parentid-flags), else None."""
    if value and _VALID.match(value.strip().lower()):
        return value.strip().lower()
    return None


async def add_traceparent(request: httpx.Request) -> None:
    """httpx `request` event hook: pass the running job's trace context upstream."""
    value = TRACEPARENT.get()
    if value and "traceparent" not in request.headers:
        request.headers["traceparent"] = value


# --- OpenTelemetry spans of a job (off unless OTEL_* asks, see dispatcher/otel.py) -----

SCOPE = "llmq.worker"
SERVICE = "llmq-worker"


def _published_ns(msg: Any) -> int | None:
    """When JetStream stored the job (its metadata), in wall-clock nanoseconds."""
    try:
        stamp = msg.metadata.timestamp
    except Exception:  # a core NATS message has no JetStream metadata
        return None
    return int(stamp.timestamp() * 1e9) if stamp is not None else None


def record_job(outcome: Any, msg: Any) -> None:
    """After a job ran: `llmq.job` (consumer span, child of the job's `traceparent`) with
    `queue pickup` (stored in JetStream until this worker started it), `backend call` and
    `first token` (backend call start until the first chunk). Built from the times the
    runner recorded, so nothing is held while the job runs."""
    otel_tracer = llmq_otel.tracer(SCOPE, SERVICE)
    if otel_tracer is None:
        return
    from opentelemetry import trace as otel
    from opentelemetry.trace import SpanKind

    job = outcome.job
    clock = llmq_otel.WallClock()
    started, ended = clock.ns(outcome.started), clock.ns(outcome.ended)
    published = _published_ns(msg)
    span = otel_tracer.start_span(
        "llmq.job",
        context=llmq_otel.parent_context(valid_traceparent(job.traceparent)),
        kind=SpanKind.CONSUMER,
        start_time=min(published, started) if published else started,
        attributes={
            "llmq.job_id": job.id,
            "llmq.model": job.model,
            "llmq.outcome": outcome.outcome,
            "messaging.system": "nats",
            "gen_ai.usage.input_tokens": outcome.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": outcome.usage.completion_tokens,
        },
    )
    if outcome.outcome not in ("ok", "retried"):
        span.set_status(otel.Status(otel.StatusCode.ERROR, outcome.outcome))
    context = otel.set_span_in_context(span)
    phases = [("backend call", started, ended)]
    if published:
        phases.insert(0, ("queue pickup", min(published, started), started))
    if outcome.first_token is not None:
        phases.append(("first token", started, clock.ns(outcome.first_token)))
    for name, start, stop in phases:
        otel_tracer.start_span(name, context=context, start_time=start).end(end_time=stop)
    span.end(end_time=ended)
