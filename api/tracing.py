"""The api's spans of one request: `llmq.request` (server span, child of the client's
`traceparent` when it sent one) with `auth`, `quota`, `queue wait` (published until a worker
accepted the job) and `relay` (accepted until the response ended). The job carries the
request span's `traceparent`, so the worker's spans join the same trace.

The request span starts when the request does (its ids go into the job); the phases are
recorded as marks on the request's record and become spans when it ends (a serving
observer), so the serving path holds no span objects. Off (see dispatcher/otel.py) every
hook returns at once.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

from llmq.dispatcher import otel as llmq_otel

SCOPE = "llmq.api"
SERVICE = "llmq-api"


class RequestTrace:
    """The open request span and the monotonic times of the phases."""

    __slots__ = ("clock", "marks", "run", "span")

    def __init__(self, span: Any, clock: llmq_otel.WallClock) -> None:
        self.span = span
        self.clock = clock
        self.marks: dict[str, float] = {}
        self.run: Any = None


def begin(request: Request, route: str, started: float) -> RequestTrace | None:
    """The request span, from `started` (monotonic); None when tracing is off."""
    tracer = llmq_otel.tracer(SCOPE, SERVICE)
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    clock = llmq_otel.WallClock()
    span = tracer.start_span(
        "llmq.request",
        start_time=clock.ns(started),
        context=llmq_otel.parent_context(request.headers.get("traceparent")),
        kind=SpanKind.SERVER,
        attributes={"llmq.route": route, "http.request.method": request.method},
    )
    return RequestTrace(span, clock)


def mark(trace: RequestTrace | None, phase: str, run: Any = None) -> None:
    """The phase `phase` ended now (`auth`, `prepared`, `quota`, `submitted`, `published`)."""
    if trace is not None:
        trace.marks[phase] = time.monotonic()
        if run is not None:
            trace.run = run


def traceparent(trace: RequestTrace | None, incoming: str | None) -> str | None:
    """What the job carries: the request span when tracing, else the client's header."""
    return incoming if trace is None else llmq_otel.traceparent_of(trace.span)


def finish(record: Any) -> None:
    """Serving observer: turn the marks into child spans and end the request span."""
    trace: RequestTrace | None = getattr(record, "trace", None)
    if trace is None:
        return
    from opentelemetry import trace as otel

    span = trace.span
    span.set_attributes(
        {
            "llmq.job_id": record.job_id,
            "llmq.tenant": record.tenant,
            "llmq.model": record.model,
            "llmq.stream": record.stream,
            "http.response.status_code": record.status,
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
        }
    )
    if record.error_code:
        span.set_attribute("error.type", record.error_code)
    if record.status >= 500:
        span.set_status(otel.Status(otel.StatusCode.ERROR, record.error_code or ""))
    tracer = llmq_otel.tracer(SCOPE, SERVICE)
    context = otel.set_span_in_context(span)
    end = record.started + record.latency
    marks = trace.marks
    run = trace.run
    accepted = getattr(run, "accepted_at", None)
    phases = [
        ("auth", record.started, marks.get("auth")),
        ("quota", marks.get("prepared"), marks.get("quota")),
        ("queue wait", marks.get("submitted"), accepted or (end if "submitted" in marks else None)),
        ("relay", accepted, end if accepted else None),
    ]
    for name, start, stop in phases:
        if start is not None and stop is not None and tracer is not None:
            child = tracer.start_span(name, context=context, start_time=trace.clock.ns(start))
            child.end(end_time=trace.clock.ns(stop))
    span.end(end_time=trace.clock.ns(end))
