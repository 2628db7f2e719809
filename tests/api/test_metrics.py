"""The api's /metrics: requests by route, model and status; latency and time-to-first-token
histograms; tokens by model; quota rejections by reason; open streams; queue depth and
pending acks per model from JetStream; bounded labels (tenant only when asked for)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.stack import unique, wait_for
from tests.worker.test_metrics import samples, value


def _chat(model: str, text: str = "one two three", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def store(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield TenantStore(client)
    await client.aclose()


async def test_requests_latency_tokens_and_quota_rejections(stack, store) -> None:  # type: ignore[no-untyped-def]
    model = unique("mm")
    await stack.worker(model=[model], echo_delay=0.01)
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=0, metrics_tenant_label=True, metrics_max_tenants=1
    )
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    limited, other = unique("ta"), unique("tb")
    await store.create(Tenant(name=limited, rpm=1))
    await store.create(Tenant(name=other))
    key_a, _ = await store.create_key(limited)
    key_b, _ = await store.create_key(other)
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=10) as client:
        auth_a = {"authorization": f"Bearer {key_a}"}
        auth_b = {"authorization": f"Bearer {key_b}"}
        assert (await client.post(url, json=_chat(model), headers=auth_a)).status_code == 200
        refused = await client.post(url, json=_chat(model), headers=auth_a)
        assert refused.status_code == 429
        streamed = await client.post(url, json=_chat(model, stream=True), headers=auth_b)
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        missing = await client.post(url, json=_chat("no-such-" + model), headers=auth_b)
        assert missing.status_code == 404
        resp = await client.get(f"{api.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    req = "llmq_api_requests_total"
    assert value(text, req, route="chat", model=model, status="200", tenant=limited) == 1
    assert value(text, req, route="chat", model=model, status="429", tenant=limited) == 1
    # one tenant may be a label value: the second one is `other`
    assert value(text, req, route="chat", model=model, status="200", tenant="other") == 1
    # a model nobody serves (client input) never becomes a label value
    assert value(text, req, route="chat", model="other", status="404", tenant="other") == 1
    assert "no-such-" not in text and other not in text
    assert (
        value(text, "llmq_api_quota_rejections_total", reason="rate_limit_exceeded", tenant=limited)
        == 1
    )
    lat = "llmq_api_request_duration_seconds_count"
    assert value(text, lat, route="chat", model=model) == 3
    # streamed requests only (a non-streaming reply arrives whole)
    assert value(text, "llmq_api_time_to_first_token_seconds_count", route="chat", model=model) == 1
    assert value(text, "llmq_api_tokens_total", model=model, direction="out", tenant=limited) == 3
    assert value(text, "llmq_api_tokens_total", model=model, direction="out", tenant="other") == 3
    assert value(text, "llmq_api_tokens_total", model=model, direction="in", tenant=limited)
    assert value(text, "llmq_api_open_streams") == 0
    assert value(text, "llmq_model_workers", model=model) == 1
    assert value(text, "llmq_model_capacity", model=model) == 4


async def test_queue_depth_and_pending_acks_per_model_and_no_tenant_label(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("mq")
    api = await stack.api(metrics_queue_ttl=0)
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    words = "a b c d e"  # 2 s a job: the state below lasts while the first one runs
    async with httpx.AsyncClient(timeout=20) as client:
        url = f"{api.url}/v1/chat/completions"
        tasks = [
            asyncio.create_task(client.post(url, json=_chat(model, words, stream=i == 0)))
            for i in range(3)
        ]

        async def queued() -> bool:
            """One running, two queued (the depth can read 2 before the worker has taken
            the first: all three published, or two and none taken yet)."""
            text = (await client.get(f"{api.url}/metrics")).text
            depth = value(text, "llmq_queue_depth", model=model, stream="LLMQ_JOBS")
            return depth == 2 and worker.scheduler.in_flight == 1

        await wait_for(queued, timeout=30)  # generous: a loaded machine is slow
        text = (await client.get(f"{api.url}/metrics")).text
        assert value(text, "llmq_queue_pending_acks", model=model, stream="LLMQ_JOBS") is not None
        assert value(text, "llmq_queue_depth", model=model, stream="LLMQ_BATCH") == 0
        results = await asyncio.gather(*tasks)
        assert all(r.status_code == 200 for r in results)
        text = (await client.get(f"{api.url}/metrics")).text
    assert value(text, "llmq_queue_depth", model=model, stream="LLMQ_JOBS") == 0
    assert not any("tenant" in dict(labels) for _, labels in samples(text))
    assert value(text, "llmq_api_requests_total", route="chat", model=model, status="200") == 3


async def test_open_streams_gauge_counts_a_live_stream(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("ms")
    api = await stack.api()
    await stack.worker(model=[model], echo_delay=0.2)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(timeout=10) as client:
        body = _chat(model, " ".join(f"w{i}" for i in range(10)), stream=True)
        async with client.stream("POST", f"{api.url}/v1/chat/completions", json=body) as resp:
            lines = resp.aiter_lines()  # held: a dropped iterator would close the stream
            async for line in lines:
                if line.startswith("data: "):
                    break
            text = (await client.get(f"{api.url}/metrics")).text
            assert value(text, "llmq_api_open_streams") == 1


def test_the_observer_is_cheap() -> None:
    """The per-request observer stays far below the 2 ms added-latency budget."""
    import time
    from types import SimpleNamespace

    from llmq.api.metrics import ApiMetrics
    from llmq.api.request_record import RequestRecord
    from llmq.schemas.settings import Settings

    registry = SimpleNamespace(known=lambda m: m == "m", live_models=dict)
    runtime = SimpleNamespace(
        settings=Settings(metrics_tenant_label=True), registry=registry, open_streams=0,
        accepting=True, js=None,
    )  # fmt: skip
    metrics = ApiMetrics(runtime)  # type: ignore[arg-type]
    record = RequestRecord(
        job_id="x", route="chat", tenant="t", model="m", status=200, latency=0.01, ttft=0.005,
        prompt_tokens=10, completion_tokens=20,
    )  # fmt: skip
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        metrics.observe(record)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 100e-6, per_call
