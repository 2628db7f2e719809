"""Fair share of a model's queue: tenant A floods 500 requests, then tenant B sends 10; B's
requests finish within 3 x their latency on an idle system — also when A floods through two
api replicas (the counts are shared in Redis). The latency is counted in the worker's job
slots, not in seconds: a loaded machine stretches every job alike, but it stretches the
flooded test process far more than the idle one, and a ratio of seconds would measure that.
A high-class request queued after 50 normal ones starts before them. Real nats-server, Valkey, echo
workers with a per-token delay, the `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
import openai

from llmq.api.fair_ledger import RedisLedger
from llmq.api.fair_share import share_of
from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.api.tenancy.models import KeySettings
from tests.spec import assert_valid
from tests.stack import unique, wait_for, wait_serving

CAPACITY = 4


async def _b_requests(url: str, b: str, model: str) -> float:
    """Seconds until all of B's 10 concurrent requests finished, on a client of its own each
    time so that one round's connections never carry over into the next."""
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60,
        default_headers={"X-Team": b},
    )  # fmt: skip
    started = time.monotonic()
    try:
        done = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "one two"}]
                )
                for _ in range(10)
            )
        )
    finally:
        await client.close()
    assert [d.choices[0].message.content for d in done] == ["one two"] * 10
    return time.monotonic() - started


async def _tenants(redis_url: str) -> tuple[str, str]:
    a, b = unique("ta"), unique("tb")
    redis = connect(redis_url)
    store = TenantStore(redis)
    await store.create(Tenant(name=a))
    await store.create(Tenant(name=b))
    await redis.aclose()
    return a, b


async def _flood_then_b(
    urls: list[str], worker: Any, model: str, a: str, b: str, size: int, redis_url: str
) -> None:
    """A floods `size` requests spread over the apis; B's 10 through the last api finish
    within 3 x their idle time, and A's queued jobs stay within one share for all apis.

    Idle, B's 10 jobs fill ceil(10 / CAPACITY) rounds of the worker's CAPACITY slots; 3 x
    that time on a worker kept busy is 3 x as many rounds of jobs, which is the most the
    worker may finish (A's and B's) while B's requests are open. Without the share, B would
    wait behind A's whole burst (hundreds of jobs)."""
    idle = await _b_requests(urls[-1], b, model)
    finished = lambda: sum(worker.outcomes.values())  # noqa: E731 - jobs the worker ended
    body = {"model": model, "messages": [{"role": "user", "content": "one two"}]}
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    redis = connect(redis_url)
    counts = RedisLedger(redis)  # what every replica reads
    async with httpx.AsyncClient(timeout=120, limits=limits) as flood:
        burst = [
            asyncio.create_task(
                flood.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body,
                           headers={"X-Team": a})
            )
            for i in range(size)
        ]  # fmt: skip
        # every slot busy with A's jobs, and A's burst sent
        await wait_for(lambda: worker.scheduler.in_flight == CAPACITY, timeout=30)
        await asyncio.sleep(1.0)
        assert await counts.queued(model, a) <= share_of(CAPACITY)  # the rest waits
        before = finished()
        busy = await _b_requests(urls[-1], b, model)
        during = finished() - before
        assert not all(t.done() for t in burst)  # A's burst was still going on
        for task in burst:
            task.cancel()
        await asyncio.gather(*burst, return_exceptions=True)
    await redis.aclose()
    rounds = math.ceil(10 / CAPACITY)
    assert during <= 3 * rounds * CAPACITY, f"{during} jobs ran in B's time ({busy=}, {idle=})"


async def test_a_burst_from_one_tenant_does_not_starve_another(
    stack: Any, redis_server: Any
) -> None:
    model = unique("fair")
    a, b = await _tenants(redis_server.url)
    api = await stack.api(auth_mode="header", tenant_header="X-Team", trusted_tenants=[a, b])
    worker = await stack.worker(model=[model], capacity=CAPACITY, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    await _flood_then_b([api.url], worker, model, a, b, 500, redis_server.url)


async def test_two_api_processes_give_a_tenant_one_share(stack: Any, redis_server: Any) -> None:
    """A floods through two api processes, B uses one of them: the same share as one api."""
    model = unique("fair")
    a, b = await _tenants(redis_server.url)
    worker = await stack.worker(model=[model], capacity=CAPACITY, echo_delay=0.1)
    apis = await asyncio.gather(
        *(stack.api_process(auth_mode="header", tenant_header="X-Team",
                            trusted_tenants=f"{a},{b}") for _ in "ab")
    )  # fmt: skip
    urls = [api.url for api in apis]
    for url in urls:
        await wait_serving(url, model, timeout=60, headers={"X-Team": b})
    await _flood_then_b(urls, worker, model, a, b, 200, redis_server.url)


async def test_a_high_class_request_starts_before_the_normal_ones_queued_before_it(
    stack: Any, redis_server: Any
) -> None:
    """One tenant of class high; 50 requests by its key capped at normal, then one by its
    key of the tenant's class: the worker (one slot) starts it as soon as the jobs already
    in the queue (the model's cap, `share_of`) are started, before the other normal ones."""
    model = unique("prio")
    tenant = unique("t")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    await store.create(Tenant(name=tenant, priority="high"))
    normal_key, _ = await store.create_key(tenant, settings=KeySettings(priority="normal"))
    high_key, _ = await store.create_key(tenant)
    await redis.aclose()
    api = await stack.api(auth_mode="keys")
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    gate = api.app.state.serving.fair
    order: list[str] = []
    clients = {
        key: openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=60)
        for key in (normal_key, high_key)
    }

    async def ask(key: str, name: str) -> None:
        raw = await clients[key].chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"{name} two"}]
        )
        assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
        assert raw.parse().choices[0].message.content == f"{name} two"
        order.append(name)

    normal = [asyncio.create_task(ask(normal_key, f"n{i}")) for i in range(50)]
    cap = share_of(1)

    async def saturated() -> bool:
        return worker.scheduler.in_flight == 1 and await gate.queued(model, tenant) == cap

    await wait_for(saturated, timeout=30)
    high = asyncio.create_task(ask(high_key, "high"))
    await asyncio.wait_for(high, 30)
    ahead = order.index("high")
    assert ahead <= 1 + cap, order  # only the running job and the queued cap went first
    assert all(t.exception() is None for t in normal if t.done())
    assert sum(not t.done() for t in normal) >= 50 - (1 + cap) - 1  # at most one more since
    for task in normal:
        task.cancel()
    await asyncio.gather(*normal, return_exceptions=True)
    for client in clients.values():
        await client.close()
