"""`Reservations` against a real Valkey: a reservation is held, refused for now or for
good, and finished exactly once however often it is released."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.embedded import EmbeddedRedis, free_port
from llmq.schemas.admission import FAILED, JobUsage, Refusal, Reservation


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = connect(redis_server.url, timeout=10.0)
    yield client
    await client.aclose()


async def _tenant(redis: Redis, **limits: object) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    await TenantStore(redis).create(Tenant(name=name, **limits))  # type: ignore[arg-type]
    return name


async def test_reserve_then_release_once(redis: Redis) -> None:
    tenant = await _tenant(redis, max_concurrent=1)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = await reservations.reserve(tenant, "m", 5, 10, "job-1")
    assert isinstance(held, Reservation) and held.held and held.job_id == "job-1"
    assert await quota.inflight(tenant) == 1
    # The one slot is taken: refused for now, with when to ask again.
    refused = await reservations.reserve(tenant, "m", 5, 10, "job-2")
    assert isinstance(refused, Refusal) and refused.status == 429
    assert refused.retry_after is not None and refused.retry_after > 0
    assert "retry-after" in refused.headers
    usage = JobUsage(prompt_tokens=4, completion_tokens=6)
    await reservations.release(held, usage)
    await reservations.release(held, usage)  # a second release (a retry) books nothing
    await reservations.release(held, FAILED)
    assert await quota.inflight(tenant) == 0
    (entry,) = await UsageReader(redis).ledger(tenant)
    assert entry.job_id == "job-1" and entry.status == "ok"
    assert (entry.prompt_tokens, entry.completion_tokens) == (4, 6)


async def test_release_later_finishes_once_and_drains(redis: Redis) -> None:
    tenant = await _tenant(redis, max_concurrent=3)
    quota = Quota(redis)
    reservations = Reservations(quota, fail_open=False)
    held = [await reservations.reserve(tenant, "m", 1, 1, f"job-{i}") for i in range(3)]
    assert all(isinstance(r, Reservation) for r in held)
    assert await quota.inflight(tenant) == 3
    for reservation in held:
        assert isinstance(reservation, Reservation)
        reservations.release_later(reservation, FAILED)
        reservations.release_later(reservation, FAILED)
    await reservations.drain()
    assert await quota.inflight(tenant) == 0
    ledger = await UsageReader(redis).ledger(tenant)
    assert sorted(e.job_id for e in ledger) == ["job-0", "job-1", "job-2"]
    assert {e.status for e in ledger} == {"failed"}


async def test_refused_for_good(redis: Redis) -> None:
    tenant = await _tenant(redis, status="suspended")
    reservations = Reservations(Quota(redis), fail_open=False)
    refused = await reservations.reserve(tenant, "m", 1, 1, "job-1")
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.code, refused.retry_after) == (403, "suspended", None)
    assert refused.type == "permission_error"


async def test_no_tenant_holds_nothing(redis: Redis) -> None:
    reservations = Reservations(Quota(redis), fail_open=False)
    held = await reservations.reserve("", "m", 1, 1, "job-1")
    assert isinstance(held, Reservation) and not held.held
    await reservations.release(held, FAILED)  # nothing to give back


async def test_quota_store_down_fails_closed_or_open() -> None:
    down = connect(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    try:
        closed = await Reservations(Quota(down), fail_open=False).reserve("t", "m", 1, 1, "j")
        assert isinstance(closed, Refusal)
        assert (closed.status, closed.code) == (503, "quota_store_down")
        assert closed.retry_after is not None  # a batch line waits and asks again
        opened = await Reservations(Quota(down), fail_open=True).reserve("t", "m", 1, 1, "j")
        assert isinstance(opened, Reservation) and not opened.held
    finally:
        await down.aclose()
