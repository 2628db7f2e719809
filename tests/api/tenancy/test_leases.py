"""Leased budget against a real Valkey: a hot tenant's requests admitted with no Redis call,
limits exact across replicas, every job booked once (docs/routing.md, "Leased budget")."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from llmq.api.reservations import Reservations
from llmq.api.tenancy import (
    KeySettings,
    Price,
    Quota,
    TenantStore,
    UsageReader,
)
from llmq.api.tenancy.lease_book import extend_slots
from llmq.api.tenancy.leases import Leases, ticket_of
from llmq.api.tenancy.periods import periods
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Reservation
from llmq.schemas.envelope import JobEnvelope
from tests.api.tenants import new_tenant
from tests.stack import unique, wait_for


def _replica(redis: Redis, window: float = 0.5) -> Reservations:
    return Reservations(Quota(redis), False, Leases(window))


async def _scripts(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_a_hot_tenant_is_admitted_from_its_lease_with_no_redis_call(redis) -> None:  # type: ignore[no-untyped-def]
    tenant = await new_tenant(redis, rpm=10_000, tpm=10_000_000, max_concurrent=400)
    replica = _replica(redis)
    got = [await replica.reserve(tenant, "m", 10, 10, f"j{i}", leased=True) for i in range(4)]
    assert all(isinstance(r, Reservation) for r in got)
    assert replica.leases is not None and replica.leases.held() == 1
    leases = replica.leases
    before, ahead = await _scripts(redis), leases.asked_ahead
    more = [await replica.reserve(tenant, "m", 10, 10, f"k{i}", leased=True) for i in range(3)]
    await replica.drain()  # the next lease, asked for in the background, is in
    # No Redis call of their own: only the background asks for the next lease.
    assert await _scripts(redis) == before + leases.asked_ahead - ahead
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


async def _burst(
    replicas: list[Reservations],
    tenant: str,
    n: int,
    seconds: float,
    key_id: str = "",
    *,
    model: str = "m",
) -> list[float]:
    """`n` requests over `seconds`, split unevenly (1, 2, 3... parts) across the replicas;
    the admission times (monotonic) of those admitted."""
    weights = list(range(1, len(replicas) + 1))
    plan = [replicas[i % len(replicas)] for i, w in enumerate(weights) for _ in range(w)]
    admitted: list[float] = []
    refused: dict[str, list[float]] = {}
    start = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + seconds * i / n - time.monotonic()))
        replica = plan[i % len(plan)]
        r = await replica.reserve(tenant, model, 5, 5, f"j{i}", key_id=key_id, leased=True)
        if isinstance(r, Reservation):
            admitted.append(time.monotonic())
        else:
            refused.setdefault(r.code, []).append(round(time.monotonic() - start, 3))

    await asyncio.gather(*(one(i) for i in range(n)))
    admitted.sort()
    REFUSED[tenant] = {code: (len(at), at[:3]) for code, at in refused.items()}
    return [t - start for t in admitted]


REFUSED: dict[str, dict[str, tuple[int, list[float]]]] = {}
"""Per tenant, the refusals of its last burst: their count and first times, for a failure's
message."""

LIMITS = {
    "rpm": ({"rpm": 600}, {}),
    "tpm": ({"tpm": 6000}, {}),
    "key rpm": ({"rpm": 100_000}, {"rpm": 600}),
    "key tpm": ({}, {"tpm": 6000}),
}
"""Each allows a bucket of 600 requests of 10 tokens, refilled at 10 a second."""


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("limit", list(LIMITS))
async def test_rates_exact_across_replicas_under_a_burst(redis, replicas: int, limit: str) -> None:  # type: ignore[no-untyped-def]
    """A 2,000-request burst over 3 s, split unevenly across the replicas: by any moment no
    more were admitted than the bucket (600) plus its refill, and by the end no fewer than
    what fits one second earlier (nothing stranded on a replica for longer)."""
    tenant_limits, key_limits = LIMITS[limit]
    tenant = await new_tenant(redis, **tenant_limits)
    key_id = ""
    if key_limits:
        _, record = await TenantStore(redis).create_key(tenant, settings=KeySettings(**key_limits))
        key_id = record.id
    group = [_replica(redis) for _ in range(replicas)]
    times = await _burst(group, tenant, 2000, 3.0, key_id)
    for n, at in enumerate(times, 1):  # GCRA: never more than 600 + 10 per second so far
        assert n <= 600 + 10 * at + 1, (n, at)
    assert len(times) >= 600 + 10 * (3.0 - 1) - 1, (len(times), times[:3], REFUSED[tenant])
    assert sum(r.leases.admitted for r in group if r.leases) > 0


@pytest.mark.parametrize("scope", ["tenant", "key"])
async def test_concurrency_never_exceeded_and_slots_come_back(redis, scope: str) -> None:  # type: ignore[no-untyped-def]
    """max_concurrent 40, three replicas, 2,000 jobs of 20-60 ms split unevenly: never more
    than 40 at once, the slots kept busy, and once the jobs end every leased slot is back
    in Redis within a second."""
    tenant = await new_tenant(redis, **({"max_concurrent": 40} if scope == "tenant" else {}))
    key_id = ""
    if scope == "key":
        limits = KeySettings(max_concurrent=40)
        key_id = (await TenantStore(redis).create_key(tenant, settings=limits))[1].id
    group = [_replica(redis) for _ in range(3)]
    for r in group:
        r.start_renewal()
    running, peak, done = 0, 0, 0
    start = time.monotonic()

    async def one(i: int) -> None:
        nonlocal running, peak, done
        await asyncio.sleep(3.0 * i / 2000)
        replica = group[[0, 1, 1, 2, 2, 2][i % 6]]
        r = await replica.reserve(tenant, "m", 5, 5, f"j{i}", key_id=key_id, leased=True)
        if isinstance(r, Reservation):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02 + 0.04 * (i % 3) / 2)
            running -= 1
            done += 1
            replica.release_later(r, JobUsage(5, 5))

    await asyncio.gather(*(one(i) for i in range(2000)))
    elapsed = time.monotonic() - start
    assert peak <= 40
    assert done >= 40 / 0.06 * (elapsed - 1) * 0.5, (done, elapsed)  # kept busy
    assert sum(r.leases.admitted for r in group if r.leases) > 0
    zset = names.inflight_key(tenant)
    if key_id:
        zset = f"{names.key_quota_prefix(tenant, key_id)}:inflight"

    async def returned() -> bool:
        return not await redis.zcard(zset)

    await wait_for(returned, timeout=1.0, interval=0.02)
    for r in group:
        await r.drain()


async def test_a_dead_replica_strands_its_slots_only_briefly(redis) -> None:  # type: ignore[no-untyped-def]
    """A replica that dies holding leases (it never returns them) strands their unused
    slots only until the lease's end + the slot grace; its running jobs keep theirs (pushed
    on at its tick) until they are booked, by whichever replica books them."""
    tenant = await new_tenant(redis, max_concurrent=100)
    dead = Reservations(Quota(redis), False, Leases(0.5, slot_grace=1.0))
    got = [await dead.reserve(tenant, "m", 5, 5, f"j{i}", leased=True) for i in range(6)]
    leased = [r for r in got if isinstance(r, Reservation) and r.lease]
    assert leased
    leases = dead.leases
    assert leases is not None
    await extend_slots(redis, leases.taken(), time.time() + 900)  # its tick ran, it died
    zset = names.inflight_key(tenant)
    assert await redis.zcard(zset) > 6
    await asyncio.sleep(2.0)
    left = await redis.zrangebyscore(zset, time.time() * 1000, "+inf")
    assert len(left) == 6, left  # its six running jobs: the direct ones, the leased ones
    other = _replica(redis)  # books the dead replica's jobs from the workers' reports
    for r in got:
        assert isinstance(r, Reservation)
        await other.release(r, JobUsage(5, 5))
    assert await redis.zcount(zset, time.time() * 1000, "+inf") == 0
    entries = await redis.xlen(names.tenant_ledger_key(tenant))
    assert entries == 6


async def test_the_ticket_is_a_safe_header_and_books_the_end_user(redis) -> None:  # type: ignore[no-untyped-def]
    """The lease ticket travels in a NATS header (`Llmq-Lease`): a client's `user` with
    spaces, CR/LF or a header of its own cannot break it, and is booked as sent."""
    tenant = await new_tenant(redis, rpm=10_000)
    replica = _replica(redis)
    user = "eve x\r\nLlmq-Tenant: other"
    got = [
        await replica.reserve(tenant, "m", 10, 10, f"j{i}", user=user, leased=True)
        for i in range(6)
    ]
    leased = [r for r in got if isinstance(r, Reservation) and r.lease]
    assert leased
    ticket = leased[0].lease
    assert not any(c in ticket.split(" ")[-1] for c in "\r\n") and ticket.count(" ") == 8
    assert ticket_of(ticket).user == user
    envelope = JobEnvelope(id="j", model="m", tenant=tenant, lease=ticket)
    back = JobEnvelope.from_headers(envelope.subject, envelope.to_headers())
    assert back.lease == ticket
    for r in got:
        assert isinstance(r, Reservation)
        await replica.release(r, JobUsage(1, 1))
    rows = await UsageReader(redis).usage(tenant, days=1, by="user")
    assert {row.model for row in rows} == {user}  # a by-user row names the user in `model`


BUDGETS = {
    "daily": ({"daily_tokens": 6000}, {}),
    "monthly": ({"monthly_tokens": 6000}, {}),
    "spend": ({"spend_budget_usd": 0.6005}, {}),
    "key daily": ({}, {"daily_tokens": 6000}),
    "key spend": ({}, {"spend_budget_usd": 0.6005}),
}
"""Each allows exactly 600 requests of 10 tokens (at 100 USD per 1M tokens, 0.001 each;
half a request more of budget, so that float sums do not decide the 600th)."""


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("budget", list(BUDGETS))
async def test_budgets_exact_across_replicas_under_a_burst(
    redis, replicas: int, budget: str
) -> None:  # type: ignore[no-untyped-def]
    """A 2,000-request burst over 3 s split unevenly: exactly the 600 that fit the budget
    are admitted (leases hold budget, and give back what they did not spend when they
    end, so the last ones fit too), and once every lease has ended the counters hold
    exactly what the admitted requests hold."""
    tenant_limits, key_limits = BUDGETS[budget]
    tenant = await new_tenant(redis, rpm=1_000_000, **tenant_limits)
    store = TenantStore(redis)
    model = unique("m")
    await store.set_price(model, Price(input_per_1m=100.0, output_per_1m=100.0))
    key_id = ""
    if key_limits:
        key_id = (await store.create_key(tenant, settings=KeySettings(**key_limits)))[1].id
    group = [_replica(redis) for _ in range(replicas)]
    for r in group:
        r.start_renewal()
    times = await _burst(group, tenant, 2000, 3.0, key_id, model=model)
    assert len(times) == 600, len(times)
    assert sum(r.leases.admitted for r in group if r.leases) > 0
    await asyncio.sleep(1.0)  # every lease ended, its leftover given back
    p = periods(time.time())
    prefix = names.key_quota_prefix(tenant, key_id) if key_id else ""
    day = f"{prefix}:d:{p.day}" if key_id else names.day_quota_key(tenant, p.day)
    month = f"{prefix}:m:{p.month}" if key_id else names.month_quota_key(tenant, p.month)
    assert int(await redis.hget(day, "tok")) == 6000
    assert int(await redis.hget(month, "tok")) == 6000
    assert float(await redis.hget(month, "usd")) == pytest.approx(0.6)
    for r in group:
        await r.drain()


async def test_a_dead_replicas_budget_comes_back(redis) -> None:  # type: ignore[no-untyped-def]
    """A replica that dies holding a budget lease never gives back what it did not spend:
    the next admission after the lease's end + the reservation lease gives back all of it
    not booked yet (here after 1 s), and its jobs booked later are added then, once."""
    tenant = await new_tenant(redis, daily_tokens=1_000_000)
    dead = Reservations(Quota(redis, lease=1.0), False, Leases(0.5))
    got = [await dead.reserve(tenant, "m", 5, 5, f"j{i}", leased=True) for i in range(8)]
    assert all(isinstance(r, Reservation) for r in got)
    assert any(isinstance(r, Reservation) and r.lease for r in got)
    day = names.day_quota_key(tenant, periods(time.time()).day)
    assert int(await redis.hget(day, "tok")) > 80  # the lease holds more than was spent
    await asyncio.sleep(2.0)
    other = _replica(redis)
    first = await other.reserve(tenant, "m", 5, 5, "k", leased=True)
    assert isinstance(first, Reservation)
    # given back: all its lease held beyond the jobs booked from it (none yet): what is
    # left is the directly reserved jobs' and this one's, 10 tokens each
    direct = sum(1 for r in got if isinstance(r, Reservation) and not r.lease)
    assert int(await redis.hget(day, "tok")) == 10 * direct + 10
    for r in got:  # the workers' reports of the dead replica's jobs: booked, real usage
        assert isinstance(r, Reservation)
        await other.release(r, JobUsage(3, 3))
        await other.release(r, JobUsage(3, 3))
    assert int(await redis.hget(day, "tok")) == 8 * 6 + 10
    assert await redis.xlen(names.tenant_ledger_key(tenant)) == 8
