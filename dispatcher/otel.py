"""OpenTelemetry for api and worker: off unless the standard `OTEL_*` variables ask for it.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and not when
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The OTLP exporter reads its endpoint,
headers, protocol and timeout from the same variables; `OTEL_SERVICE_NAME` names the service
(default `llmq-api` / `llmq-worker`). Off, nothing is imported and `tracer` returns None, so a
hook costs one call and a None check. The SDK comes with the `llmq[otel]` extra.

Spans cross processes through the W3C `traceparent` the job envelope already carries.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_EXPORTERS = frozenset({"otlp", "console"})
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_state: dict[str, Any] = {"checked": False, "provider": None}


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "none" in exporters:
        return False
    return bool(exporters & _EXPORTERS) or any(env.get(name) for name in _ENDPOINTS)


def _build(service: str, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "console" in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    if "otlp" in exporters or not exporters & _EXPORTERS:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def provider(service: str) -> Any:
    """The process's tracer provider, built on first use from the environment; None when
    traces are off (or the SDK is missing, which is logged once)."""
    if not _state["checked"]:
        _state["checked"] = True
        if wanted(os.environ):
            try:
                _state["provider"] = _build(service, os.environ)
            except ImportError as exc:
                log.warning("OTEL_* asks for traces but %s: pip install 'llmq[otel]'", exc)
    return _state["provider"]


def install(tracer_provider: Any) -> None:
    """Use this provider (or None: traces off), whatever the environment says; for tests and
    for programs that embed llmq and configure OpenTelemetry themselves."""
    _state["checked"] = True
    _state["provider"] = tracer_provider


def tracer(scope: str, service: str) -> Any:
    """A tracer of `scope` (`llmq.api`, `llmq.worker`), or None when traces are off."""
    found = provider(service)
    return None if found is None else found.get_tracer(scope)


class WallClock:
    """Turns `time.monotonic()` readings into the wall-clock nanoseconds spans take, with one
    offset, so the order of the readings is kept exactly."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = time.time_ns() - time.monotonic_ns()

    def ns(self, monotonic: float) -> int:
        return int(monotonic * 1e9) + self.offset


def parent_context(traceparent: str | None) -> Any:
    """The OpenTelemetry context of a W3C `traceparent` (an empty one when absent)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not traceparent:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def traceparent_of(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
