"""The api keeps no memory per request once the request is over (issue 28 point 3): after a
warm-up, later rounds of requests grow what llmq's own code holds (tracemalloc, the
allocating line in llmq) by far less than the first round's per-request cost would. An
in-process api with tenants (the quota path) and a real echo worker, whole and streamed
requests; time-bounded memories (released jobs, the console's live window) are shortened
so that they reach their steady size within the test."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import httpx
import pytest

from llmq.api import reservations
from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.stack import unique, wait_serving

pytestmark = pytest.mark.isolated  # other tests' servers in the process would count too

ROUND = 600
"""Requests per measured round."""
LLMQ_ONLY = [tracemalloc.Filter(True, "*/llmq/*"), tracemalloc.Filter(False, "*/tests/*")]


async def _round(client: httpx.AsyncClient, model: str, n: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        body = {
            "model": model,
            "stream": i % 3 == 0,
            "messages": [{"role": "user", "content": f"hello number {i}"}],
        }
        async with gate:
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text

    await asyncio.gather(*(one(i) for i in range(n)))


def _held(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.filter_traces(LLMQ_ONLY).statistics("filename"))


async def test_requests_leave_no_memory_behind(
    stack, redis_server, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(reservations, "RELEASED_SECONDS", 0.5)
    redis = connect(redis_server.url)
    tenant = unique("t")
    store = TenantStore(redis)
    await store.create(Tenant(name=tenant, max_concurrent=64))
    key, _ = await store.create_key(tenant)
    api = await stack.api(auth_mode="keys")
    api.app.state.console_live.window = 0.5
    model = unique("echo")
    await stack.worker(model=[model], backend="echo")
    headers = {"authorization": f"Bearer {key}"}
    await wait_serving(api.url, model, headers=headers)
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=60) as client:
        await _round(client, model, 300)  # warm-up: caches, pools, interned strings
        tracemalloc.start()
        try:
            held = []
            for _ in range(3):
                await _round(client, model, ROUND)
                await asyncio.sleep(1.0)  # the time-bounded memories forget the round before
                gc.collect()
                held.append(_held(tracemalloc.take_snapshot()))
        finally:
            tracemalloc.stop()
    await redis.aclose()
    # A leak grows both rounds alike; the requests of other tests' servers in this process
    # land in one of them at most, so the smaller growth is the api's own.
    growth = min(held[1] - held[0], held[2] - held[1])
    # before the fix a round grew it by 221 B a request (133 KB); after it, 2 to 40 B a
    # request, the most on a loaded machine
    assert growth < 80 * ROUND, f"llmq's memory grew {growth} B over {ROUND} requests"
