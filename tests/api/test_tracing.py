"""OpenTelemetry traces: one trace from the client's `traceparent` through the api (auth,
quota, queue wait, relay) and, over NATS, the worker (queue pickup, backend call, first
token), collected by the SDK's in-memory exporter; off unless OTEL_* asks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

pytest.importorskip("opentelemetry.sdk", reason="pip install -e '.[otel]'")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from llmq.dispatcher import otel
from tests.stack import unique, wait_for

CLIENT_TRACE = uuid.uuid4().hex
CLIENT_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.install(provider)
    yield exporter
    otel.install(None)
    provider.shutdown()


def _by_name(finished: Any) -> dict[str, Any]:
    return {s.name: s for s in finished}


async def test_one_trace_across_api_and_worker(stack, spans: InMemorySpanExporter) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    api = await stack.api()
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="none", max_retries=0)
    stream = await sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "trace me"}],
        stream=True,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await sdk.close()
    assert text == "trace me"

    def complete() -> bool:
        names = {s.name for s in spans.get_finished_spans()}
        return {"llmq.request", "llmq.job", "relay", "first token"} <= names

    await wait_for(complete)
    finished = spans.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in finished} == {CLIENT_TRACE}, "one trace"
    by = _by_name(finished)
    request, job = by["llmq.request"], by["llmq.job"]
    assert request.instrumentation_scope.name == "llmq.api"
    assert job.instrumentation_scope.name == "llmq.worker"
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN, "child of the client's span"
    assert job.parent.span_id == request.context.span_id, "the worker joins via the job"
    for name in ("auth", "quota", "queue wait", "relay"):
        assert by[name].parent.span_id == request.context.span_id, name
        assert by[name].instrumentation_scope.name == "llmq.api"
    for name in ("queue pickup", "backend call", "first token"):
        assert by[name].parent.span_id == job.context.span_id, name
        assert by[name].instrumentation_scope.name == "llmq.worker"
    for span in finished:
        assert span.start_time <= span.end_time, span.name
    assert request.start_time <= by["auth"].start_time <= by["quota"].start_time
    assert by["queue wait"].end_time <= by["relay"].end_time <= request.end_time
    assert by["backend call"].start_time <= by["first token"].end_time
    assert request.attributes["llmq.model"] == model
    assert request.attributes["http.response.status_code"] == 200
    assert job.attributes["llmq.outcome"] == "ok"
    assert job.attributes["gen_ai.usage.output_tokens"] > 0


async def test_refused_request_ends_its_span_with_the_error(stack, spans) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(
            model=unique("missing"), messages=[{"role": "user", "content": "x"}]
        )
    await sdk.close()
    await wait_for(lambda: any(s.name == "llmq.request" for s in spans.get_finished_spans()))
    (request,) = [s for s in spans.get_finished_spans() if s.name == "llmq.request"]
    assert request.attributes["http.response.status_code"] == 404
    assert "error.type" in request.attributes


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_traces_are_off_unless_the_otel_variables_ask(env: dict[str, str], on: bool) -> None:
    assert otel.wanted(env) is on


def test_the_otlp_exporter_reads_the_standard_variables(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    provider = otel._build("llmq-api", {"OTEL_SERVICE_NAME": "gateway-eu"})
    try:
        assert provider.resource.attributes["service.name"] == "gateway-eu"
        (processor,) = provider._active_span_processor._span_processors
        exporter = processor._batch_processor._exporter
        assert exporter._endpoint == "http://collector.example:4318/v1/traces"
    finally:
        provider.shutdown()


class _Collector:
    """A real OTLP/HTTP receiver (`POST /v1/traces`, protobuf) in a thread of the test."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        received: list[tuple[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource_spans in export.resource_spans:
                    attrs = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.append((attrs.get("service.name", ""), span))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        import threading

        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_worker_process_exports_its_spans_over_otlp_into_the_api_trace(  # type: ignore[no-untyped-def]
    stack, spans: InMemorySpanExporter, monkeypatch
) -> None:
    """The worker as a real OS process, configured only by OTEL_* variables, sends its spans
    to an OTLP collector; they continue the trace of the api's request span."""
    pytest.importorskip("opentelemetry.proto")
    collector = _Collector()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        model = unique("m")
        worker = stack.process("worker", "--model", model)
        api = await stack.api()
        await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=30)
        sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="none", max_retries=0)
        reply = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "across processes"}]
        )
        await sdk.close()
        assert reply.choices[0].message.content == "across processes"
        await wait_for(lambda: any(s.name == "llmq.request" for s in spans.get_finished_spans()))
        await wait_for(lambda: any(s.name == "llmq.job" for _, s in collector.received), 20)
    finally:
        await asyncio.to_thread(collector.stop)
    (request,) = [s for s in spans.get_finished_spans() if s.name == "llmq.request"]
    remote = {s.name: (service, s) for service, s in collector.received}
    service, job = remote["llmq.job"]
    assert service == "llmq-worker", worker.output()
    assert job.trace_id.hex() == f"{request.context.trace_id:032x}", "one trace"
    assert job.parent_span_id.hex() == f"{request.context.span_id:016x}"
    assert {"queue pickup", "backend call", "first token"} <= set(remote)
    for name in ("queue pickup", "backend call", "first token"):
        assert remote[name][1].parent_span_id == job.span_id, name
