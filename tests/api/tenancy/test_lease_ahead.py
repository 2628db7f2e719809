"""Leases asked for ahead of need, and a leased job's booking in one script call, against a
real Valkey (docs/routing.md, "Leased budget")."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import Quota, UsageReader
from llmq.api.tenancy.leases import Leases
from llmq.api.tenancy.periods import periods
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Reservation
from tests.api.tenants import new_tenant


async def _scripts(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_a_hot_tenant_never_waits_for_redis_once_its_first_lease_came(redis) -> None:  # type: ignore[no-untyped-def]
    """400 requests at about 400 a second: after the first lease, every one is admitted
    from a lease (the next lease is asked for in the background when the open one is half
    spent), and each is booked exactly once."""
    tenant = await new_tenant(
        redis, rpm=1_000_000, tpm=10**9, max_concurrent=10_000, daily_tokens=10**9
    )
    replica = Reservations(Quota(redis), False, Leases(0.5))
    replica.start_renewal()
    got: list[Reservation] = []
    first_leased = None
    for i in range(400):
        r = await replica.reserve(tenant, "m", 5, 5, f"j{i}", leased=True)
        assert isinstance(r, Reservation)
        if r.lease and first_leased is None:
            first_leased = i
        got.append(r)
        replica.release_later(r, JobUsage(5, 5))
        await asyncio.sleep(0.0025)
    assert first_leased is not None and first_leased < 10
    direct = [r.job_id for r in got[first_leased:] if not r.lease]
    assert direct == []  # none waited for a Redis call
    assert replica.leases is not None and replica.leases.asked_ahead > 0
    await replica.drain()
    rows = await UsageReader(redis).usage(tenant, days=1)
    assert sum(row.requests for row in rows) == 400
    assert await redis.xlen(names.tenant_ledger_key(tenant)) == 400


async def test_a_lease_asked_ahead_holds_nothing_of_its_own(redis) -> None:  # type: ignore[no-untyped-def]
    """A lease-only grant charges its `g` requests (RPM at its end, slots, day tokens) and
    nothing for the request it was sized on: no reservation record, no slot named after
    it, no RPM unit; near a limit it grants nothing and writes nothing."""
    tenant = await new_tenant(redis, rpm=6000, max_concurrent=1000, daily_tokens=100_000)
    quota = Quota(redis)
    now = time.time()
    until = now + 0.5
    wish = (8, until, until + 30)
    d = await quota.reserve(tenant, "m", 5, 5, "L1", now=now, lease_wish=wish, lease_only=True)
    assert d.allowed and d.lease[0] == 8
    assert not await redis.exists(names.reservation_key(tenant, "L1"))
    members = set(await redis.zrange(names.inflight_key(tenant), 0, -1))
    assert members == {f"L1#{n}" for n in range(1, 9)}
    day = names.day_quota_key(tenant, periods(now).day)
    assert int(await redis.hget(day, "tok")) == 80  # the lease's 8 requests, nothing more
    tat = float(await redis.hget(names.rate_key(tenant), "req"))
    assert tat == pytest.approx(until * 1000 + 8 * 10, abs=1)  # 8 units at its end, 10 ms each
    # Near the daily limit: a quarter of the headroom is less than one request.
    tight = await new_tenant(redis, daily_tokens=30)
    d = await quota.reserve(tight, "m", 5, 5, "L2", now=now, lease_wish=wish, lease_only=True)
    assert not d.allowed
    assert not await redis.exists(names.day_quota_key(tight, periods(now).day))
    assert not await redis.exists(names.inflight_key(tight))


async def test_a_leased_job_is_booked_in_one_script_call(redis) -> None:  # type: ignore[no-untyped-def]
    """The record and the booking of a lease-admitted job are one script call; a second
    booking of it (the usage booker's) changes nothing."""
    tenant = await new_tenant(redis, rpm=10_000, daily_tokens=10**6)
    replica = Reservations(Quota(redis), False, Leases(0.5))
    got = [await replica.reserve(tenant, "m", 10, 10, f"j{i}", leased=True) for i in range(6)]
    leased = [r for r in got if isinstance(r, Reservation) and r.lease]
    assert leased
    await replica.drain()
    before = await _scripts(redis)
    await replica.release(leased[0], JobUsage(7, 3))
    assert await _scripts(redis) == before + 1
    await replica.release(leased[0], JobUsage(7, 3))
    assert await redis.xlen(names.tenant_ledger_key(tenant)) == 1


async def test_release_later_coalesces_and_the_booker_waits_for_it(redis) -> None:  # type: ignore[no-untyped-def]
    """Jobs that end within `BOOK_DELAY` of each other are booked in one round trip; while
    they are, `booking_here` says so and `settled` waits for it, so the usage booker acks
    their reports without booking them a second time."""
    tenant = await new_tenant(redis, rpm=10_000)
    replica = Reservations(Quota(redis), False)
    got = [await replica.reserve(tenant, "m", 10, 10, f"j{i}") for i in range(5)]
    rounds = replica.release_rounds
    for r in got:
        assert isinstance(r, Reservation)
        replica.release_later(r, JobUsage(7, 3))
    assert all(replica.booking_here(f"j{i}") for i in range(5))
    await replica.settled([f"j{i}" for i in range(5)], 5.0)
    assert replica.release_rounds == rounds + 1
    assert all(replica.released_here(f"j{i}") for i in range(5))
    assert not any(replica.booking_here(f"j{i}") for i in range(5))
    assert await redis.xlen(names.tenant_ledger_key(tenant)) == 5
