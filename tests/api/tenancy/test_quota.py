"""Quota semantics against a real Valkey: exact limits under concurrency, across processes."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Price, Quota, QuotaBackendDown, Tenant, TenantStore
from llmq.api.tenancy.periods import periods
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names
from tests.stack import refused_port

ROOT = Path(__file__).resolve().parents[3]
NOW = (int(time.time()) // 60) * 60 + 3600 + 30.0
"""Mid-minute, so a test never straddles a window boundary; an hour ahead, so the expiry
times the scripts derive from it stay in the future however late in the session a test runs."""

# One OS process: its own event loop, its own Redis client, `n` concurrent reserves.
_CHILD = """
import asyncio, json, sys, time
from llmq.api.tenancy import Quota, connect

async def main(url, tenant, n, tag, start_at, now):
    redis = connect(url, timeout=10.0, max_connections=100)
    quota = Quota(redis)
    await asyncio.gather(*(redis.ping() for _ in range(100)))  # open the pool's connections
    await asyncio.sleep(max(0.0, start_at - time.time()))
    # 25 concurrent callers, each 10 reserves 5 ms apart: the two processes overlap in
    # time, so both race on the counter while the 50 passes are handed out.
    async def caller(c):
        out = []
        for i in range(n // 25):
            out.append(await quota.reserve(tenant, "m", 10, 10, f"{tag}-{c}-{i}", now=now))
            await asyncio.sleep(0.005)
        return out
    decisions = [d for ds in await asyncio.gather(*(caller(c) for c in range(25))) for d in ds]
    await redis.aclose()
    print(json.dumps({
        "allowed": sum(d.allowed for d in decisions),
        "reasons": [d.reason for d in decisions if not d.allowed],
        "limits": sorted({d.limit for d in decisions if not d.allowed}),
        "remaining": [d.remaining_requests for d in decisions if d.allowed],
    }))

url, tenant, n, tag, start_at, now = sys.argv[1:]
asyncio.run(main(url, tenant, int(n), tag, float(start_at), float(now)))
"""


async def make_tenant(store: TenantStore, name: str, **limits: object) -> Tenant:
    return await store.create(Tenant(name=name, **limits))  # type: ignore[arg-type]


async def test_rpm_exact_across_two_processes(
    redis_server: EmbeddedRedis, store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, rpm=50)
    start_at = time.time() + 2.0
    args = [redis_server.url, tenant_name, "250"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            *args,
            tag,
            str(start_at),
            str(NOW),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))

    assert sum(r["allowed"] for r in results) == 50
    reasons = [reason for r in results for reason in r["reasons"]]
    assert reasons == ["rate_limit_exceeded"] * 450
    assert {limit for r in results for limit in r["limits"]} == {"rpm"}
    # Each allowed request saw a distinct count: the 50 passes were serialized exactly.
    assert sorted(x for r in results for x in r["remaining"]) == list(range(50))
    # GCRA: 50 requests at one instant move the tenant's arrival time a whole minute ahead.
    rate = await redis.hgetall(names.rate_key(tenant_name))
    assert set(rate) == {"req"} and float(rate["req"]) == pytest.approx(NOW * 1000 + 60_000)


async def test_rpm_window_resets_next_minute(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, rpm=2)
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j1", now=NOW)).allowed
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j2", now=NOW)).allowed
    refused = await quota.reserve(tenant_name, "m", 1, 1, "j3", now=NOW)
    assert (refused.allowed, refused.reason, refused.limit) == (
        False,
        "rate_limit_exceeded",
        "rpm",
    )
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.headers()["retry-after"] == "30"
    assert refused.http_status == 429
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j3", now=NOW + 60)).allowed


async def test_concurrency_slots(store: TenantStore, quota: Quota, tenant_name: str) -> None:
    await make_tenant(store, tenant_name, max_concurrent=3)

    async def burst(tag: str) -> list[str]:
        decisions = await asyncio.gather(
            *(quota.reserve(tenant_name, "m", 5, 5, f"{tag}-{i}", now=NOW) for i in range(30))
        )
        refused = [d for d in decisions if not d.allowed]
        assert {(d.reason, d.limit) for d in refused} == {("rate_limit_exceeded", "max_concurrent")}
        return [d.reservation.job_id for d in decisions if d.reservation]

    held = await burst("a")
    assert len(held) == 3
    assert await quota.inflight(tenant_name, now=NOW) == 3
    assert await burst("b") == []

    # A normal release frees one slot, a failed one another; a second release changes nothing.
    assert await quota.release(tenant_name, "m", held[0], 5, 3, now=NOW)
    assert await quota.release(tenant_name, "m", held[1], 0, 0, failed=True, now=NOW)
    assert not await quota.release(tenant_name, "m", held[1], 0, 0, failed=True, now=NOW)
    assert not await quota.release(tenant_name, "m", held[0], 5, 3, now=NOW)
    assert await quota.inflight(tenant_name, now=NOW) == 1
    more = await burst("c")
    assert len(more) == 2
    assert await quota.inflight(tenant_name, now=NOW) == 3

    for job in [held[2], *more]:
        assert await quota.release(tenant_name, "m", job, 5, 5, now=NOW)
        assert not await quota.release(tenant_name, "m", job, 5, 5, now=NOW)
    assert await quota.inflight(tenant_name, now=NOW) == 0


async def test_failed_release_returns_reserved_tokens(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, tpm=100, daily_tokens=1000)
    first = await quota.reserve(tenant_name, "m", 30, 70, "j1", now=NOW)
    assert first.allowed and first.remaining_tokens == 0
    assert not (await quota.reserve(tenant_name, "m", 1, 0, "j2", now=NOW)).allowed
    assert await quota.release(tenant_name, "m", "j1", 0, 0, failed=True, now=NOW)
    again = await quota.reserve(tenant_name, "m", 30, 70, "j2", now=NOW)
    assert again.allowed
    day = await redis.hget(names.day_quota_key(tenant_name, _day(NOW)), "tok")
    assert day == "100"


async def test_tpm_reconciled_with_actual_usage(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, tpm=1000)
    ok = [await quota.reserve(tenant_name, "m", 100, 200, f"j{i}", now=NOW) for i in range(4)]
    assert [d.allowed for d in ok] == [True, True, True, False]
    assert ok[3].limit == "tpm" and ok[2].remaining_tokens == 100
    # Each job really used 50 tokens, not 300: the window keeps only the actual ones.
    for i in range(3):
        await quota.release(tenant_name, "m", f"j{i}", 20, 30, now=NOW)
    d = await quota.reserve(tenant_name, "m", 100, 200, "j3", now=NOW)
    assert d.allowed and d.remaining_tokens == 1000 - 150 - 300


async def test_daily_budget_never_exceeded_under_concurrency(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    budget, prompt, max_tokens = 2000, 20, 80
    await make_tenant(store, tenant_name, daily_tokens=budget)
    used: list[int] = []
    rng = random.Random(7)

    async def client(n: int) -> None:
        for i in range(1000):
            job = f"c{n}-{i}"
            d = await quota.reserve(tenant_name, "m", prompt, max_tokens, job, now=NOW)
            if not d.allowed:
                assert (d.reason, d.limit) == ("insufficient_quota", "daily_tokens")
                return
            await asyncio.sleep(rng.random() / 100)
            completion = rng.randint(0, max_tokens)
            used.append(prompt + completion)
            assert await quota.release(tenant_name, "m", job, prompt, completion, now=NOW)

    await asyncio.gather(*(client(n) for n in range(40)))
    # Reservations hold prompt + max_tokens, real usage is at most that: never above budget.
    assert 0 < sum(used) <= budget
    day = await redis.hget(names.day_quota_key(tenant_name, _day(NOW)), "tok")
    assert int(day or 0) == sum(used)
    assert await quota.inflight(tenant_name, now=NOW) == 0
    # The next UTC day starts from zero.
    assert (
        await quota.reserve(tenant_name, "m", prompt, max_tokens, "next", now=NOW + 86400)
    ).allowed


async def test_monthly_and_spend_budgets(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, monthly_tokens=250)
    assert (await quota.reserve(tenant_name, "m", 100, 100, "j1", now=NOW)).allowed
    d = await quota.reserve(tenant_name, "m", 50, 50, "j2", now=NOW)
    assert (d.reason, d.limit, d.http_status) == ("insufficient_quota", "monthly_tokens", 429)
    assert d.retry_after > 0

    model = f"priced-{tenant_name}"
    await store.set_price(model, Price(input_per_1m=1000.0, output_per_1m=2000.0))
    spender = f"{tenant_name}-usd"
    await make_tenant(store, spender, spend_budget_usd=1.25)
    # 100 in + 200 out = 0.1 + 0.4 = 0.5 USD held per request.
    a = await quota.reserve(spender, model, 100, 200, "s1", now=NOW)
    assert a.allowed and a.reservation and a.reservation.reserved_usd == pytest.approx(0.5)
    assert (await quota.reserve(spender, model, 100, 200, "s2", now=NOW)).allowed
    d = await quota.reserve(spender, model, 100, 200, "s3", now=NOW)
    assert (d.reason, d.limit) == ("insufficient_quota", "spend_budget_usd")
    # Real usage was cheaper: 100 in, 50 out = 0.2 USD, so 0.3 USD comes back.
    await quota.release(spender, model, "s1", 100, 50, now=NOW)
    assert (await quota.reserve(spender, model, 100, 200, "s3", now=NOW)).allowed
    month = await redis.hget(
        names.month_quota_key(spender, time.strftime("%Y-%m", time.gmtime(NOW))), "usd"
    )
    assert float(month or 0) == pytest.approx(1.2)
    assert (await store.delete_price(model)) is True


async def test_lease_reaping(store: TenantStore, quota: Quota, tenant_name: str) -> None:
    await make_tenant(store, tenant_name, max_concurrent=1)
    crashed = await quota.reserve(tenant_name, "m", 1, 1, "crashed", now=NOW, lease=5)
    assert crashed.allowed and crashed.reservation
    assert crashed.reservation.lease_until == pytest.approx(NOW + 5)
    assert not (await quota.reserve(tenant_name, "m", 1, 1, "next", now=NOW + 4)).allowed
    assert await quota.inflight(tenant_name, now=NOW + 4) == 1
    assert await quota.inflight(tenant_name, now=NOW + 6) == 0
    assert (await quota.reserve(tenant_name, "m", 1, 1, "next", now=NOW + 6)).allowed
    # A very late release of the reaped job still reconciles, and does not free "next".
    assert await quota.release(tenant_name, "m", "crashed", 1, 1, now=NOW + 7)
    assert await quota.inflight(tenant_name, now=NOW + 7) == 1


async def test_extend_lease(store: TenantStore, quota: Quota, tenant_name: str) -> None:
    await make_tenant(store, tenant_name, max_concurrent=1)
    assert (await quota.reserve(tenant_name, "m", 1, 1, "long", now=NOW, lease=5)).allowed
    assert await quota.extend(tenant_name, "long", 60, now=NOW + 4)
    assert not (await quota.reserve(tenant_name, "m", 1, 1, "other", now=NOW + 30)).allowed
    assert not await quota.extend(tenant_name, "missing", 60, now=NOW)
    assert not await quota.extend(tenant_name, "long", 60, now=NOW + 100)  # ran out: stays out


async def test_duplicate_reserve_counts_once(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await make_tenant(store, tenant_name, rpm=10, tpm=1000)
    first = await quota.reserve(tenant_name, "m", 10, 20, "same", now=NOW)
    second = await quota.reserve(tenant_name, "m", 10, 20, "same", now=NOW)
    assert first.allowed and second.allowed and second.duplicate and not first.duplicate
    assert second.reservation and second.reservation.reserved_tokens == 30
    rate = await redis.hgetall(names.rate_key(tenant_name))
    # One request of 10 per minute = 6 s; 30 tokens of 1000 per minute = 1.8 s.
    assert float(rate["req"]) == pytest.approx(NOW * 1000 + 6000)
    assert float(rate["tok"]) == pytest.approx(NOW * 1000 + 1800)


async def test_status_model_and_unknown_tenant(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j", now=NOW)).reason == "unknown_tenant"
    await make_tenant(store, tenant_name, models=["a", "b:1"])
    assert (await quota.reserve(tenant_name, "b:1", 1, 1, "j1", now=NOW)).allowed
    d = await quota.reserve(tenant_name, "c", 1, 1, "j2", now=NOW)
    assert (d.reason, d.http_status) == ("model_not_allowed", 403)
    await store.suspend(tenant_name)
    d = await quota.reserve(tenant_name, "a", 1, 1, "j3", now=NOW)
    assert (d.allowed, d.reason, d.http_status) == (False, "suspended", 403)
    await store.resume(tenant_name)
    assert (await quota.reserve(tenant_name, "a", 1, 1, "j3", now=NOW)).allowed


async def test_unlimited_and_headers(store: TenantStore, quota: Quota, tenant_name: str) -> None:
    await make_tenant(store, tenant_name)
    d = await quota.reserve(tenant_name, "m", 10**6, 10**6, "big", now=NOW)
    assert d.allowed and d.limit_requests is None and d.limit_tokens is None
    assert d.headers() == {}

    limited = f"{tenant_name}-l"
    await make_tenant(store, limited, rpm=60, tpm=10_000)
    d = await quota.reserve(limited, "m", 100, 400, "j", now=NOW + 0.25)
    assert d.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9500",
        "x-ratelimit-reset-tokens": "3s",
    }


async def test_redis_down_fails_closed() -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{refused_port()}/0", socket_connect_timeout=0.5)
    quota = Quota(down)
    with pytest.raises(QuotaBackendDown):
        await quota.reserve("t", "m", 1, 1, "j")
    with pytest.raises(QuotaBackendDown):
        await quota.release("t", "m", "j", 1, 1)
    with pytest.raises(QuotaBackendDown):
        await TenantStore(down).resolve_key("sk-llmq-whatever")
    await down.aclose()


async def test_bytes_client_works_too(
    redis_server: EmbeddedRedis, store: TenantStore, tenant_name: str
) -> None:
    """The api may build its client without decode_responses."""
    raw = Redis.from_url(redis_server.url)
    try:
        await make_tenant(store, tenant_name, rpm=5)
        quota = Quota(raw)
        d = await quota.reserve(tenant_name, "m", 1, 1, "j", now=NOW)
        assert d.allowed and d.remaining_requests == 4
        assert await quota.release(tenant_name, "m", "j", 1, 1, now=NOW)
        assert (await TenantStore(raw).get(tenant_name)) is not None
    finally:
        await raw.aclose()


def _day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


@pytest.mark.parametrize(
    ("now", "day", "month", "day_end", "month_end"),
    [
        (1709251199.9, "2024-02-29", "2024-02", 1709251200.0, 1709251200.0),
        (1709251200.0, "2024-03-01", "2024-03", 1709337600.0, 1711929600.0),
        (1735689599.0, "2024-12-31", "2024-12", 1735689600.0, 1735689600.0),
    ],
)
def test_periods_are_utc_calendar(
    now: float, day: str, month: str, day_end: float, month_end: float
) -> None:
    p = periods(now)
    assert (p.day, p.month, p.day_end, p.month_end) == (day, month, day_end, month_end)
    assert p.minute_end - 60 <= now < p.minute_end
