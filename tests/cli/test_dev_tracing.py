"""docs/operations.md's way to see traces: `OTEL_EXPORTER_OTLP_ENDPOINT=… llmq dev` makes its
api and its worker export one trace per request to an OTLP/HTTP collector (here a real
receiver in the test process), each process under its own service name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import openai
import pytest

from llmq.embedded import free_port
from tests.api.test_tracing import _Collector

pytestmark = pytest.mark.timeout(120)


def test_llmq_dev_exports_one_trace_across_api_and_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.proto")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = _Collector()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "OTEL_"))}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmq.cli", "dev", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "llmq is running" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
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
