"""Leased budget end to end (docs/routing.md, "Leased budget"): several `llmq api` processes
spend leases of one tenant's limits with no Redis call per request, yet no limit is ever
exceeded, nothing is stranded, and every job is booked once — also when a replica holding
leases is killed with SIGKILL. Real nats-server, Valkey, worker; the openai SDK, and plain
HTTP/1.1 (`one_shot_http`) for the 2,000-request bursts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.api.tenancy.periods import periods
from llmq.schemas import names
from tests.stack import one_shot_http, unique, wait_for, wait_serving


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield client
    await client.aclose()


async def _tenant(redis: Redis, **limits: object) -> tuple[str, str]:
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, **limits))  # type: ignore[arg-type]
    key, _ = await store.create_key(name)
    return name, key


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _lease_booked(redis: Redis, tenant: str) -> int:
    """Jobs booked through `lease_book.lua` (admitted from a lease): their markers."""
    pattern = names.reservation_key(tenant, "*#B")
    return len([k async for k in redis.scan_iter(match=pattern, count=1000)])


async def _apis(stack: Any, n: int, model: str, key: str, **env: object) -> list[str]:
    apis = await asyncio.gather(
        *(stack.api_process(auth_mode="keys", heartbeat=5.0, **env) for _ in range(n))
    )
    headers = {"authorization": f"Bearer {key}"}
    for api in apis:
        await wait_serving(api.url, model, headers=headers)
    return [api.url for api in apis]


@pytest.mark.parametrize("replicas", [2, 3])
async def test_rpm_and_concurrency_exact_across_api_processes(stack, redis, replicas: int) -> None:  # type: ignore[no-untyped-def]
    """RPM 600 (10 a second), 60 at once and a daily budget: a 2,000-request burst over
    10 s split unevenly across the api processes admits no more than the bucket plus its
    refill, no fewer than what fit a second before the burst ended, never more than 60 at
    once; each admitted job is booked exactly once, the day's counter holds exactly what
    was booked, and some were admitted from leases."""
    model = unique("m")
    worker = await stack.worker(model=[model], capacity=128, echo_delay=0.01)
    tenant, key = await _tenant(redis, rpm=600, max_concurrent=60, daily_tokens=10**9)
    urls = await _apis(stack, replicas, model, key)
    plan = [urls[i] for i in range(replicas) for _ in range(i + 1)]  # 1:2(:3)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    body = json.dumps(_chat(model)).encode()
    n, seconds = 2000, 10.0
    start = time.monotonic()
    sent_last = start

    async def one(i: int) -> tuple[int, dict[str, str]]:
        """A request on a connection of its own (an httpx pool of 1,000 costs this process
        more CPU than the schedule leaves it on a busy machine)."""
        nonlocal sent_last
        await asyncio.sleep(max(0.0, start + seconds * i / n - time.monotonic()))
        sent_last = max(sent_last, time.monotonic())
        call = one_shot_http(plan[i % len(plan)], "POST", "/v1/chat/completions", headers, body)
        return await asyncio.wait_for(call, 120)

    resps = await asyncio.gather(*(one(i) for i in range(n)))
    ended = time.monotonic()
    codes = [status for status, _ in resps]
    admitted = codes.count(200)
    assert admitted + codes.count(429) == n, {c: codes.count(c) for c in set(codes)}
    assert admitted <= 600 + 10 * (ended - start) + 1, (admitted, ended - start)
    assert admitted >= 600 + 10 * (sent_last - start - 1.0) - 1, (admitted, sent_last - start)
    assert worker.scheduler.peak <= 60
    job_ids = {fields["x-request-id"] for status, fields in resps if status == 200}
    reader = UsageReader(redis)

    async def all_booked() -> bool:
        return len(await reader.ledger(tenant, count=5000)) >= admitted

    await wait_for(all_booked, timeout=60)
    await asyncio.sleep(1.0)  # a second booking would show now
    ledger = await reader.ledger(tenant, count=5000)
    assert sorted(e.job_id for e in ledger) == sorted(job_ids)
    (row,) = await reader.usage(tenant, days=1)
    assert row.requests == admitted
    assert await _lease_booked(redis, tenant) > 0
    await wait_for(lambda: _none_inflight(redis, tenant), timeout=5)
    # the day's budget (leased too) holds exactly the tokens booked
    day = names.day_quota_key(tenant, periods(time.time()).day)
    assert int(await redis.hget(day, "tok")) == sum(
        e.prompt_tokens + e.completion_tokens for e in ledger
    )


async def _none_inflight(redis: Redis, tenant: str) -> bool:
    return await Quota(redis).inflight(tenant) == 0


SLOT_GRACE = 6.0
"""The doomed replica's `LLMQ_QUOTA_SLOT_GRACE` (30 s by default): how long its unused lease
slots stay held after its leases' end."""


async def test_a_replica_killed_holding_leases(stack, redis) -> None:  # type: ignore[no-untyped-def]
    """An api process is killed (SIGKILL) while it holds leases and streams lease-admitted
    jobs: the worker finishes them and the other replica books each exactly once (the
    envelope's lease ticket); no more than 24 ran at once; what the tenant still holds once
    every job is booked is the dead replica's unused lease slots, each held until its
    lease's end + the slot grace (`SLOT_GRACE`, short here) and no longer; they come back,
    and then the tenant gets all 24 again."""
    model = unique("m")
    worker = await stack.worker(model=[model], capacity=64, echo_delay=0.05)
    tenant, key = await _tenant(redis, max_concurrent=24)
    survivor = await stack.api(auth_mode="keys", key_cache_ttl=0)
    (doomed_url,) = await _apis(stack, 1, model, key, quota_slot_grace=SLOT_GRACE)
    doomed = stack.processes[-1]
    sdk = openai.AsyncOpenAI(base_url=f"{doomed_url}/v1", api_key=key, max_retries=0, timeout=30)
    started: list[str] = []

    async def stream(words: int) -> None:
        messages: Any = [{"role": "user", "content": " ".join(["w"] * words)}]
        try:
            async with sdk.chat.completions.with_streaming_response.create(
                model=model, messages=messages, stream=True
            ) as response:
                started.append(response.headers["x-request-id"])
                async for _ in response.iter_lines():
                    pass
        except Exception:  # the api dies mid-stream: the SDK raises its transport error
            pass

    # short jobs make the tenant hot (leases), then long ones run when the replica dies
    for _ in range(5):
        await asyncio.gather(*(stream(2) for _ in range(8)))
    longs = [asyncio.create_task(stream(60)) for _ in range(8)]
    await wait_for(lambda: len(started) >= 48, timeout=30)
    doomed.kill()
    killed = time.time()
    await asyncio.gather(*longs)
    await sdk.close()
    assert worker.scheduler.peak <= 24
    reader = UsageReader(redis)

    async def all_booked() -> bool:
        return len(await reader.ledger(tenant, count=500)) >= len(started)

    await wait_for(all_booked, timeout=60)
    await asyncio.sleep(1.0)
    ledger = await reader.ledger(tenant, count=500)
    assert sorted(e.job_id for e in ledger) == sorted(started)
    assert await _lease_booked(redis, tenant) > 0
    # Every job is booked: what the tenant still holds is the dead replica's unused lease
    # slots, each held until its lease's end (at most a window after the kill) + the grace.
    zset = names.inflight_key(tenant)
    held = await redis.zrangebyscore(zset, time.time() * 1000, "+inf", withscores=True)
    print(f"held after the bookings, {time.time() - killed:.1f} s after the kill: {held}")
    assert all(at / 1000 <= killed + 0.5 + SLOT_GRACE + 0.1 for _, at in held), (killed, held)
    await wait_for(lambda: _none_inflight(redis, tenant), timeout=SLOT_GRACE + 10)
    own = openai.AsyncOpenAI(base_url=f"{survivor.url}/v1", api_key=key, max_retries=0)
    replies = await asyncio.gather(
        *(own.chat.completions.with_raw_response.create(**_chat(model)) for _ in range(24)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    await own.close()
    assert all(not isinstance(r, BaseException) for r in replies), replies
