"""docs/operations.md's way to see traces: `OTEL_EXPORTER_OTLP_ENDPOINT=… llmq dev` makes its
api and its worker export one trace per request to an OTLP/HTTP collector (here a real
receiver in the test process), each process under its own service name."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections import defaultdict

import openai
import pytest

from llmq.embedded import free_port
from tests.api.test_tracing import _Collector
from tests.stack import start_dev

pytestmark = pytest.mark.timeout(120)


def test_llmq_dev_exports_one_trace_across_api_and_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.proto")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = _Collector()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "OTEL_"))}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    log = tmp_path / "dev.log"
    ports: list[int] = []

    def argv() -> list[str]:
        ports[:] = [free_port()]
        return [sys.executable, "-m", "llmq.cli", "dev", "--port", str(ports[0])]

    proc = start_dev(argv, log, env=env, timeout=90)
    port = ports[0]
    try:
        key = re.search(r"sk-llmq-[A-Za-z0-9_\-]+", log.read_text())
        assert key is not None
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(0))
        reply = sdk.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "trace me"}]
        )
        sdk.close()
        assert reply.choices[0].message.content == "trace me"

        def exported() -> set[tuple[str, str]]:
            return {(service, span.name) for service, span in collector.received}

        wanted = {("llmq-api", "relay"), ("llmq-worker", "llmq.job")}
        deadline = time.monotonic() + 30
        while not wanted <= exported():
            assert time.monotonic() < deadline, exported()
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        collector.stop()
    traces: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for service, span in collector.received:
        traces[span.trace_id.hex()].add((service, span.name))
    (spans,) = [t for t in traces.values() if ("llmq-api", "llmq.request") in t]
    assert spans >= {
        ("llmq-api", "auth"), ("llmq-api", "quota"), ("llmq-api", "queue wait"),
        ("llmq-api", "relay"), ("llmq-worker", "llmq.job"), ("llmq-worker", "queue pickup"),
        ("llmq-worker", "backend call"), ("llmq-worker", "first token"),
    }, spans  # fmt: skip
