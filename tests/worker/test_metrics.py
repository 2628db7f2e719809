"""A worker's own /metrics: in-flight, capacity, jobs by outcome, backend latency, time to
first token, tokens and circuit state, with bounded labels."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmq.embedded import free_port
from llmq.schemas import names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.openai import Usage
from llmq.schemas.registry import WorkerInfo
from llmq.worker.metrics import JobBook, WorkerMetrics
from llmq.worker.runner import JobOutcome
from tests.stack import wait_for


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def job(job_id: str, model: str) -> JobEnvelope:
    return JobEnvelope(id=job_id, model=model)


def test_the_book_knows_a_job_by_its_envelope() -> None:
    book = JobBook(["m1"])
    batch = JobEnvelope(id="j", model="m1", tenant="t", deadline_ms=5_000, batch=True)
    with book.track(batch):
        running = book.running["j"]
        assert (running.stream, running.model, running.tenant) == (names.BATCH_STREAM, "m1", "t")
        assert running.deadline == 5.0
        assert book.in_flight() == {(names.BATCH_STREAM, "m1"): 1}
    assert book.running == {}
    book.record(JobOutcome(batch, "ok", started=1.0, ended=2.0))
    assert book.counters[(names.BATCH_STREAM, "m1")].requests == 1
    assert book.counters[(names.JOBS_STREAM, "m1")].requests == 0


def test_outcomes_feed_counters_histograms_and_live_gauges() -> None:
    state = WorkerInfo(id="w1", backend="echo", models=["m1"], capacity=4, in_flight=2)
    book = JobBook(["m1"])
    metrics = WorkerMetrics(book, lambda: state)
    ok = JobOutcome(
        job("j1", "m1"), "ok", Usage(7, 5, 12), started=10.0, first_token=10.2, ended=11.0
    )
    book.record(ok)
    book.record(JobOutcome(job("j2", "m1"), "upstream_error", started=20.0, ended=20.5))
    book.record(JobOutcome(job("j3", ""), "expired"))
    book.record(JobOutcome(job("j4", "made-up-model"), "ok", started=1.0, ended=1.1))
    state.circuit = "open"
    text = metrics.render().decode()
    jobs = "llmq_worker_jobs_total"
    assert value(text, jobs, model="m1", stream="LLMQ_JOBS", outcome="ok") == 2
    assert value(text, jobs, model="m1", stream="LLMQ_JOBS", outcome="upstream_error") == 1
    assert value(text, jobs, model="m1", stream="LLMQ_JOBS", outcome="expired") == 1
    assert value(text, jobs, model="m1", stream="LLMQ_BATCH", outcome="ok") == 0
    # one model: an unknown name counts for it; the label set never grows with input
    assert "made-up-model" not in text
    assert value(text, "llmq_worker_backend_duration_seconds_count", model="m1") == 3
    assert value(text, "llmq_worker_backend_duration_seconds_sum", model="m1") == 1.6
    assert value(text, "llmq_worker_time_to_first_token_seconds_count", model="m1") == 1
    assert value(text, "llmq_worker_tokens_total", model="m1", direction="in") == 7
    assert value(text, "llmq_worker_tokens_total", model="m1", direction="out") == 5
    assert value(text, "llmq_worker_in_flight") == 2
    assert value(text, "llmq_worker_capacity") == 4
    assert value(text, "llmq_worker_circuit_state", state="open") == 1
    assert value(text, "llmq_worker_circuit_state", state="closed") == 0
    assert value(text, "llmq_worker_draining") == 0
    assert value(text, "llmq_worker_info", worker_id="w1", backend="echo", version="") == 1
    # the micro service's counters: 4 jobs, one error
    counters = book.counters[(names.JOBS_STREAM, "m1")]
    assert (counters.requests, counters.errors) == (4, 1)


def test_several_models_put_strangers_under_other() -> None:
    state = WorkerInfo(id="w", backend="echo", models=["a", "b"], capacity=1)
    book = JobBook(["a", "b"])
    metrics = WorkerMetrics(book, lambda: state)
    book.record(JobOutcome(job("j", "zzz"), "ok", started=1.0, ended=2.0))
    text = metrics.render().decode()
    assert value(text, "llmq_worker_jobs_total", model="other", stream="LLMQ_JOBS", outcome="ok")


async def test_worker_serves_metrics_on_its_port(stack) -> None:  # type: ignore[no-untyped-def]
    model = f"met-{uuid.uuid4().hex[:8]}"
    port = free_port()
    api = await stack.api()
    worker = await stack.worker(
        model=[model], capacity=3, echo_delay=0.05, metrics_port=port, metrics_host="127.0.0.1"
    )
    url = f"http://127.0.0.1:{port}/metrics"
    assert worker.info().metrics_url == url
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    assert api.runtime.registry.workers_for(model)[0].metrics_url == url
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        task = asyncio.create_task(client.post(f"{api.url}/v1/chat/completions", json=body))
        await wait_for(lambda: worker.scheduler.in_flight == 1)
        during = (await client.get(url)).text
        assert value(during, "llmq_worker_in_flight") == 1
        assert value(during, "llmq_worker_model_in_flight", model=model, stream="LLMQ_JOBS") == 1
        assert (await task).status_code == 200
        resp = await client.get(url)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text
        assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404
    assert value(text, "llmq_worker_in_flight") == 0
    assert value(text, "llmq_worker_capacity") == 3
    assert value(text, "llmq_worker_jobs_total", model=model, stream="LLMQ_JOBS", outcome="ok") == 1
    assert value(text, "llmq_worker_time_to_first_token_seconds_count", model=model) == 1
    duration = value(text, "llmq_worker_backend_duration_seconds_sum", model=model)
    assert duration is not None and duration >= 0.15  # 4 tokens x 0.05 s: the whole stream
    assert value(text, "llmq_worker_tokens_total", model=model, direction="out") == 4
    assert value(text, "llmq_worker_circuit_state", state="closed") == 1
    await worker.close()
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            await client.get(url)
            stopped = False
        except httpx.ConnectError:
            stopped = True
    assert stopped, "the metrics port is closed with the worker"


async def test_worker_probes_answer_before_nats_and_ready_only_while_taking_jobs(  # type: ignore[no-untyped-def]
    stack, tmp_path: Path
) -> None:
    """/health answers as soon as the process runs, even while NATS is not there yet (a
    Kubernetes startup/liveness probe); /ready only while it is connected and taking jobs
    (not while waiting, nor while draining). Neither needs the metrics token."""
    from llmq.embedded import EmbeddedNats

    port = free_port()
    nats_port = free_port()
    stack.nats_url = f"nats://127.0.0.1:{nats_port}"
    base = f"http://127.0.0.1:{port}"
    starting = asyncio.create_task(
        stack.worker(
            model=[f"probe-{uuid.uuid4().hex[:8]}"], metrics_port=port,
            metrics_host="127.0.0.1", metrics_token="scrape-secret",
        )
    )  # fmt: skip
    server = None
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def answers(path: str, status: int) -> bool:
                try:
                    return (await client.get(base + path)).status_code == status
                except httpx.TransportError:
                    return False

            await wait_for(lambda: answers("/health", 200))
            assert await answers("/ready", 503)  # NATS is not up yet
            assert await answers("/metrics", 401)
            server = EmbeddedNats(tmp_path / "late-nats", port=nats_port)
            worker = await asyncio.wait_for(starting, 60)
            await wait_for(lambda: answers("/ready", 200))
            assert (await client.get(base + "/health")).text == "ok\n"
            drained = asyncio.create_task(worker.drain())
            await asyncio.sleep(0)  # the drain has begun: no longer taking jobs
            assert worker.draining and not worker.ready()
            await drained
    finally:
        if not starting.done():
            starting.cancel()
        if server is not None:
            server.stop()
