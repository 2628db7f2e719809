"""Fair share of a model's queue (issue 16, point 3): tenant A floods 500 requests, then
tenant B sends 10; B's requests finish within 3 x their latency on an idle system. Real
nats-server, Valkey, an echo worker with a per-token delay, the `openai` SDK for B."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai

from llmq.api.fair_share import FairShare, share_of
from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.stack import unique, wait_for

CAPACITY = 4


async def test_the_share_holds_a_tenant_back_and_lets_it_go_in_order() -> None:
    gate = FairShare(lambda model: 2)
    first = await gate.enter("m", "a", 1)
    second = await gate.enter("m", "a", 1)
    assert first is not None and second is not None
    assert await gate.enter("m", "a", 0.05) is None  # past its share: waits, then gives up
    other = await gate.enter("m", "b", 0.05)  # another tenant is not held back
    assert other is not None
    third = asyncio.create_task(gate.enter("m", "a", 5))
    await asyncio.sleep(0.01)
    assert not third.done()
    first.leave()
    first.leave()  # leaving twice frees one place only
    ticket = await asyncio.wait_for(third, 1)
    assert ticket is not None and gate.queued("m", "a") == 2
    for t in (second, ticket, other):
        t.leave()
    assert gate.queued("m", "a") == gate.queued("m", "b") == 0


async def _b_requests(client: openai.AsyncOpenAI, model: str) -> float:
    """Seconds until all of B's 10 concurrent requests finished."""
    started = time.monotonic()
    done = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "one two"}]
            )
            for _ in range(10)
        )
    )
    assert [d.choices[0].message.content for d in done] == ["one two"] * 10
    return time.monotonic() - started


async def test_a_burst_from_one_tenant_does_not_starve_another(
    stack: Any, redis_server: Any
) -> None:
    model = unique("fair")
    a, b = unique("ta"), unique("tb")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    await store.create(Tenant(name=a))
    await store.create(Tenant(name=b))
    await redis.aclose()
    api = await stack.api(auth_mode="header", tenant_header="X-Team", trusted_tenants=[a, b])
    worker = await stack.worker(model=[model], capacity=CAPACITY, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    client = openai.AsyncOpenAI(
        base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=60,
        default_headers={"X-Team": b},
    )  # fmt: skip
    idle = await _b_requests(client, model)

    gate = api.app.state.serving.fair
    body = {"model": model, "messages": [{"role": "user", "content": "one two"}]}
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=120, limits=limits) as flood:
        burst = [
            asyncio.create_task(
                flood.post(f"{api.url}/v1/chat/completions", json=body, headers={"X-Team": a})
            )
            for _ in range(500)
        ]
        # every slot busy with A's jobs, and A's burst sent
        await wait_for(lambda: worker.scheduler.in_flight == CAPACITY, timeout=30)
        await asyncio.sleep(1.0)
        assert gate.queued(model, a) <= share_of(CAPACITY)  # the rest of A's burst waits
        busy = await _b_requests(client, model)
        assert not all(t.done() for t in burst)  # A's burst was still going on
        for task in burst:
            task.cancel()
        await asyncio.gather(*burst, return_exceptions=True)
    await client.close()
    assert busy <= 3 * idle, (busy, idle)
