"""Leased budget against a real Valkey: a hot tenant's requests admitted with no Redis call,
limits exact across replicas, every job booked once (docs/routing.md, "Leased budget")."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.api.tenancy.leases import Leases
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Reservation
from tests.stack import unique


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield client
    await client.aclose()


async def _tenant(redis: Redis, **limits: object) -> str:
    name = unique("t")
    await TenantStore(redis).create(Tenant(name=name, **limits))  # type: ignore[arg-type]
    return name


def _replica(redis: Redis, window: float = 0.5) -> Reservations:
    return Reservations(Quota(redis), False, Leases(window))


async def _scripts(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_a_hot_tenant_is_admitted_from_its_lease_with_no_redis_call(redis) -> None:  # type: ignore[no-untyped-def]
    tenant = await _tenant(redis, rpm=10_000, tpm=10_000_000, max_concurrent=400)
    replica = _replica(redis)
    got = [await replica.reserve(tenant, "m", 10, 10, f"j{i}", leased=True) for i in range(4)]
    assert all(isinstance(r, Reservation) for r in got)
    assert replica.leases is not None and replica.leases.held() == 1
    before = await _scripts(redis)
    more = [await replica.reserve(tenant, "m", 10, 10, f"k{i}", leased=True) for i in range(3)]
    assert await _scripts(redis) == before  # no Redis call at all
    assert all(isinstance(r, Reservation) and r.lease for r in more)
    # Booked exactly once each, whoever books: the relaying api, then the usage booker.
    for r in [*got, *more]:
        assert isinstance(r, Reservation)
        await replica.release(r, JobUsage(7, 3))
        await replica.release(r, JobUsage(7, 3))
    rows = await UsageReader(redis).usage(tenant, days=1)
    assert sum(row.requests for row in rows) == 7
    assert sum(row.prompt_tokens + row.completion_tokens for row in rows) == 70
    entries = await redis.xlen(names.tenant_ledger_key(tenant))
    assert entries == 7


async def _burst(replicas: list[Reservations], tenant: str, n: int, seconds: float) -> list[float]:
    """`n` requests over `seconds`, split unevenly (1, 2, 3... parts) across the replicas;
    the admission times (monotonic) of those admitted."""
    weights = list(range(1, len(replicas) + 1))
    plan = [replicas[i % len(replicas)] for i, w in enumerate(weights) for _ in range(w)]
    admitted: list[float] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + seconds * i / n - time.monotonic()))
        r = await plan[i % len(plan)].reserve(tenant, "m", 5, 5, f"j{i}", leased=True)
        if isinstance(r, Reservation):
            admitted.append(time.monotonic())

    await asyncio.gather(*(one(i) for i in range(n)))
    admitted.sort()
    return [t - start for t in admitted]


@pytest.mark.parametrize("replicas", [2, 3])
async def test_rpm_exact_across_replicas_under_a_burst(redis, replicas: int) -> None:  # type: ignore[no-untyped-def]
    """RPM 600 (10/s): a 2,000-request burst over 3 s never admits more than the bucket
    (600) plus its refill, and no fewer than that refill minus one second's."""
    tenant = await _tenant(redis, rpm=600)
    group = [_replica(redis) for _ in range(replicas)]
    times = await _burst(group, tenant, 2000, 3.0)
    for at in times:  # GCRA: never more than 600 + 10 per second up to any moment
        assert sum(1 for t in times if t <= at) <= 600 + 10 * at + 1
    span = times[-1] if times else 0
    assert len(times) >= 600 + 10 * (span - 1) - 1, (len(times), span)
    assert sum(r.leases.admitted for r in group if r.leases) > 0
