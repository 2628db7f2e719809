"""Usage rows and ledger entries booked by releases, with prices turned into cost."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Price, Quota, Tenant, TenantStore, UsageReader
from llmq.schemas import names

NOW = (int(time.time()) // 86400) * 86400 + 43_200.0
"""Noon UTC today."""


async def test_usage_rows_and_cost(
    store: TenantStore, quota: Quota, usage: UsageReader, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    priced, free = f"p-{tenant_name}", f"f-{tenant_name}"
    await store.set_price(priced, Price(input_per_1m=2.0, output_per_1m=8.0))

    async def run(
        job: str, model: str, prompt: int, completion: int, now: float, **kw: bool
    ) -> None:
        assert (await quota.reserve(tenant_name, model, prompt, 500, job, now=now)).allowed
        assert await quota.release(tenant_name, model, job, prompt, completion, now=now, **kw)

    await run("j1", priced, 1000, 250, NOW)
    await run("j2", priced, 3000, 750, NOW)
    await run("j3", free, 10, 0, NOW, failed=True)
    await run("j4", priced, 500, 500, NOW - 86_400)  # yesterday
    assert not await quota.release(tenant_name, priced, "j1", 1000, 250, now=NOW)  # no double

    today = time.strftime("%Y-%m-%d", time.gmtime(NOW))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(NOW - 86_400))
    rows = await usage.usage(tenant_name, days=1, now=NOW)
    assert [(r.day, r.model) for r in rows] == [(today, free), (today, priced)]
    by_model = {r.model: r for r in rows}
    p = by_model[priced]
    assert (p.requests, p.failed, p.prompt_tokens, p.completion_tokens) == (2, 0, 4000, 1000)
    assert p.total_tokens == 5000
    assert p.cost_usd == pytest.approx((4000 * 2.0 + 1000 * 8.0) / 1e6)
    f = by_model[free]
    assert (f.requests, f.failed, f.prompt_tokens, f.cost_usd) == (1, 1, 10, 0.0)

    two_days = await usage.usage(tenant_name, days=2, now=NOW)
    assert [(r.day, r.model) for r in two_days] == [
        (today, free),
        (today, priced),
        (yesterday, priced),
    ]
    assert two_days[-1].cost_usd == pytest.approx((500 * 2.0 + 500 * 8.0) / 1e6)
    assert await usage.usage(f"{tenant_name}-nobody", days=3, now=NOW) == []


async def test_ledger(
    store: TenantStore, quota: Quota, usage: UsageReader, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    model = f"p-{tenant_name}"
    await store.set_price(model, Price(input_per_1m=1.0, output_per_1m=1.0))
    for i in range(3):
        await quota.reserve(tenant_name, model, 100, 100, f"job-{i}", now=NOW + i)
    await quota.release(tenant_name, model, "job-0", 100, 20, now=NOW + 10)
    await quota.release(tenant_name, model, "job-1", 0, 0, failed=True, now=NOW + 11)
    await quota.release(tenant_name, model, "job-1", 0, 0, failed=True, now=NOW + 12)
    await quota.release(tenant_name, model, "job-2", 100, 100, now=NOW + 13)

    entries = await usage.ledger(tenant_name, count=10)
    assert [e.job_id for e in entries] == ["job-2", "job-1", "job-0"]  # newest first
    last = entries[-1]
    assert (last.tenant, last.model, last.status) == (tenant_name, model, "ok")
    assert (last.prompt_tokens, last.completion_tokens, last.reserved_tokens) == (100, 20, 200)
    assert last.cost_usd == pytest.approx(120 / 1e6)
    assert last.ts == pytest.approx(NOW + 10)
    assert entries[1].status == "failed" and entries[1].cost_usd == 0.0

    assert [e.job_id for e in await usage.ledger(tenant_name, count=2)] == ["job-2", "job-1"]
    everyone = await usage.ledger(None, count=10_000)
    assert [e.job_id for e in everyone if e.tenant == tenant_name] == ["job-2", "job-1", "job-0"]


async def test_ledger_is_capped(store: TenantStore, redis: Redis, tenant_name: str) -> None:
    """MAXLEN ~ trims in whole stream nodes (100 entries by default), so "about" the cap."""
    await store.create(Tenant(name=tenant_name))
    quota = Quota(redis, ledger_maxlen=10, tenant_ledger_maxlen=10, ledger_max_age=3600.0)
    for i in range(400):
        await quota.reserve(tenant_name, "m", 1, 1, f"j{i}", now=NOW)
        await quota.release(tenant_name, "m", f"j{i}", 1, 1, now=NOW)
    ledger = names.tenant_ledger_key(tenant_name)
    assert 10 <= await redis.xlen(ledger) <= 200
    # an idle (or deleted) tenant's ledger goes after ledger_max_age since its last entry
    assert 3_500_000 < await redis.pttl(ledger) <= 3_600_000
