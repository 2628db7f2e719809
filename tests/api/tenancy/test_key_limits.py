"""Exact rates (GCRA, no boundary burst), API keys with limits of their own inside their
tenant's, key expiry and revocation in the script, usage per key and end user, and cached
prompt tokens priced apart — all against a real Valkey."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import KeySettings, Price, Quota, Tenant, TenantStore, UsageReader
from llmq.api.tenancy.models import key_input, parse_duration
from llmq.schemas import names
from llmq.schemas.openai import Usage
from llmq.schemas.usage import cache_counts

MINUTE0 = (int(time.time()) // 60) * 60 + 3600.0
"""The start of a minute an hour ahead (expiry times derived from it stay in the future)."""


async def _key(store: TenantStore, tenant: str, **settings: object) -> str:
    _, record = await store.create_key(tenant, settings=KeySettings(**settings))  # type: ignore[arg-type]
    return record.id


async def test_no_burst_across_a_minute_boundary(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    """RPM 10: 10 at second 59 and 10 at second 61 -> the second ten are refused (a fixed
    minute window let all 20 through)."""
    await store.create(Tenant(name=tenant_name, rpm=10))
    first = [
        await quota.reserve(tenant_name, "m", 1, 1, f"a{i}", now=MINUTE0 + 59) for i in range(10)
    ]
    assert all(d.allowed for d in first)
    second = [
        await quota.reserve(tenant_name, "m", 1, 1, f"b{i}", now=MINUTE0 + 61) for i in range(10)
    ]
    assert [d.allowed for d in second] == [False] * 10
    assert {(d.reason, d.limit) for d in second} == {("rate_limit_exceeded", "rpm")}
    # One request per 6 s comes back: the next fits at 59 + 6 = 65 s, Retry-After says so.
    assert second[0].retry_after == pytest.approx(4.0)
    assert not (await quota.reserve(tenant_name, "m", 1, 1, "c0", now=MINUTE0 + 64.9)).allowed
    assert (await quota.reserve(tenant_name, "m", 1, 1, "c0", now=MINUTE0 + 65)).allowed
    # A whole minute after the burst the bucket is full again.
    later = [
        await quota.reserve(tenant_name, "m", 1, 1, f"d{i}", now=MINUTE0 + 125 + 60)
        for i in range(11)
    ]
    assert [d.allowed for d in later] == [True] * 10 + [False]


async def test_tpm_has_no_boundary_burst_either(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name, tpm=1000))
    assert (await quota.reserve(tenant_name, "m", 500, 500, "a", now=MINUTE0 + 59)).allowed
    d = await quota.reserve(tenant_name, "m", 500, 500, "b", now=MINUTE0 + 61)
    assert (d.allowed, d.limit) == (False, "tpm")
    assert d.retry_after == pytest.approx(58.0)
    # The job used 100 tokens, not 1000: giving back 900 lets the next one in at once.
    assert await quota.release(tenant_name, "m", "a", 50, 50, now=MINUTE0 + 61)
    ok = await quota.reserve(tenant_name, "m", 400, 400, "b", now=MINUTE0 + 61)
    # 1000 - 100 used - 800 held + 2 s of refill (1000 / 60 per s = 33).
    assert ok.allowed and ok.remaining_tokens == 1000 - 100 - 800 + 33


async def test_key_limits_inside_tenant_limits(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name, rpm=5, max_concurrent=10))
    tight = await _key(store, tenant_name, rpm=2, label="ci", owner="team-a")
    loose = await _key(store, tenant_name, rpm=100)
    now = MINUTE0 + 10
    # The key's RPM binds first...
    a = [
        await quota.reserve(tenant_name, "m", 1, 1, f"t{i}", now=now, key_id=tight)
        for i in range(3)
    ]
    assert [d.allowed for d in a] == [True, True, False]
    assert (a[2].reason, a[2].limit) == ("rate_limit_exceeded", "key_rpm")
    # ... and the headers show the tighter of the two limits.
    assert a[0].limit_requests == 2 and a[0].remaining_requests == 1
    # The other key still gets the tenant's remaining three, then the tenant's RPM binds.
    b = [
        await quota.reserve(tenant_name, "m", 1, 1, f"l{i}", now=now, key_id=loose)
        for i in range(4)
    ]
    assert [d.allowed for d in b] == [True, True, True, False]
    assert b[3].limit == "rpm"
    # A refused key request counted nothing for the tenant.
    assert await quota.inflight(tenant_name, now=now) == 5


async def test_key_concurrency_budgets_and_release(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    key = await _key(store, tenant_name, max_concurrent=1, daily_tokens=300)
    now = MINUTE0 + 10
    assert (await quota.reserve(tenant_name, "m", 50, 50, "j1", now=now, key_id=key)).allowed
    busy = await quota.reserve(tenant_name, "m", 50, 50, "j2", now=now, key_id=key)
    assert (busy.allowed, busy.limit) == (False, "key_max_concurrent")
    assert (await quota.reserve(tenant_name, "m", 50, 50, "nokey", now=now)).allowed
    # Release frees the key's slot too, and books real usage against the key's day budget.
    assert await quota.release(tenant_name, "m", "j1", 20, 10, now=now)
    assert (await quota.reserve(tenant_name, "m", 100, 100, "j2", now=now, key_id=key)).allowed
    assert await quota.release(tenant_name, "m", "j2", 100, 100, now=now)
    over = await quota.reserve(tenant_name, "m", 50, 50, "j3", now=now, key_id=key)
    assert (over.reason, over.limit, over.http_status) == (
        "insufficient_quota",
        "key_daily_tokens",
        429,
    )
    prefix = names.key_quota_prefix(tenant_name, key)
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert await redis.hget(f"{prefix}:d:{day}", "tok") == "230"
    # The renewal pushes the key's slot along with the tenant's.
    assert await quota.reserve(tenant_name, "m", 1, 1, "long", now=now, key_id=key, lease=5)
    assert await quota.extend(tenant_name, "long", 60, now=now + 4)
    assert await redis.zscore(f"{prefix}:inflight", "long") == pytest.approx((now + 64) * 1000)


async def test_expired_revoked_and_model_limited_keys(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name, models=["a", "b"]))
    now = MINUTE0 + 10
    expiring = await _key(store, tenant_name, expires_at=now + 30)
    assert (await quota.reserve(tenant_name, "a", 1, 1, "j1", now=now, key_id=expiring)).allowed
    gone = await quota.reserve(tenant_name, "a", 1, 1, "j2", now=now + 30, key_id=expiring)
    assert (gone.allowed, gone.reason, gone.http_status) == (False, "invalid_api_key", 401)

    only_b = await _key(store, tenant_name, models=["b"])
    refused = await quota.reserve(tenant_name, "a", 1, 1, "j3", now=now, key_id=only_b)
    assert (refused.reason, refused.limit, refused.http_status) == (
        "model_not_allowed",
        "key",
        403,
    )
    assert (await quota.reserve(tenant_name, "b", 1, 1, "j3", now=now, key_id=only_b)).allowed
    # The tenant's list still applies to a key that names a model outside it.
    wide = await _key(store, tenant_name, models=["c"])
    assert (await quota.reserve(tenant_name, "c", 1, 1, "j4", now=now, key_id=wide)).reason == (
        "model_not_allowed"
    )

    assert await store.revoke_key(tenant_name, only_b)
    revoked = await quota.reserve(tenant_name, "b", 1, 1, "j5", now=now, key_id=only_b)
    assert revoked.reason == "invalid_api_key"


async def test_usage_per_key_and_end_user_bounded(
    redis: Redis, store: TenantStore, tenant_name: str
) -> None:
    quota = Quota(redis, max_users_per_day=2)
    usage = UsageReader(redis)
    await store.create(Tenant(name=tenant_name))
    key = await _key(store, tenant_name)
    now = MINUTE0 + 10
    for i, user in enumerate(["alice", "bob", "alice", "carol", "dave", "x" * 100]):
        job = f"j{i}"
        assert (
            await quota.reserve(tenant_name, "m", 10, 10, job, now=now, key_id=key, user=user)
        ).allowed
        assert await quota.release(tenant_name, "m", job, 10, 5, now=now)
    assert (await quota.reserve(tenant_name, "m", 10, 10, "anon", now=now)).allowed
    assert await quota.release(tenant_name, "m", "anon", 10, 5, now=now)

    by_user = {r.model: r for r in await usage.usage(tenant_name, 1, now=now, by="user")}
    # Two users per day at most: the later new ones share `(other)`.
    assert set(by_user) == {"alice", "bob", "(other)"}
    assert by_user["alice"].requests == 2 and by_user["alice"].completion_tokens == 10
    assert by_user["(other)"].requests == 3
    by_key = await usage.usage(tenant_name, 1, now=now, by="key")
    assert [(r.model, r.requests) for r in by_key] == [(key, 6)]
    by_model = await usage.usage(tenant_name, 1, now=now)
    assert [(r.model, r.requests) for r in by_model] == [("m", 7)]
    # The ledger names the user (cut to 64 characters) even when the daily rows are full.
    anon, last = await usage.ledger(tenant_name, count=2)
    assert (last.key_id, last.user) == (key, "x" * 64)
    assert (anon.key_id, anon.user) == ("", "")


async def test_cached_prompt_tokens_priced_apart(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    model = f"cached-{tenant_name}"
    await store.set_price(
        model,
        Price(
            input_per_1m=1000.0,
            output_per_1m=2000.0,
            cached_input_per_1m=100.0,
            cache_write_per_1m=1250.0,
        ),
    )
    await store.create(Tenant(name=tenant_name, spend_budget_usd=100.0))
    now = MINUTE0 + 10
    assert (await quota.reserve(tenant_name, model, 1000, 100, "j1", now=now)).allowed
    # 1000 prompt = 600 read from cache + 100 written to it + 300 plain; 100 completion.
    assert await quota.release(
        tenant_name, model, "j1", 1000, 100, now=now, cached_tokens=600, cache_write_tokens=100
    )
    expected = (300 * 1000 + 600 * 100 + 100 * 1250 + 100 * 2000) / 1e6
    assert Price(
        input_per_1m=1000.0, output_per_1m=2000.0, cached_input_per_1m=100.0,
        cache_write_per_1m=1250.0,
    ).cost(1000, 100, 600, 100) == pytest.approx(expected)  # fmt: skip
    row = (await UsageReader(redis).usage(tenant_name, 1, now=now))[0]
    assert row.cost_usd == pytest.approx(expected) and row.cached_tokens == 600
    month = time.strftime("%Y-%m", time.gmtime(now))
    spent = await redis.hget(names.month_quota_key(tenant_name, month), "usd")
    assert float(spent or 0) == pytest.approx(expected)
    # No cached price set: cached tokens cost the input price.
    plain = f"plain-{tenant_name}"
    await store.set_price(plain, Price(input_per_1m=1000.0))
    assert (await quota.reserve(tenant_name, plain, 100, 0, "j2", now=now)).allowed
    assert await quota.release(tenant_name, plain, "j2", 100, 0, now=now, cached_tokens=100)
    rows = {r.model: r for r in await UsageReader(redis).usage(tenant_name, 1, now=now)}
    assert rows[plain].cost_usd == pytest.approx(0.1)
    await store.delete_price(model)
    await store.delete_price(plain)


def test_cache_counts_from_reported_usage() -> None:
    usage = Usage(
        prompt_tokens=10,
        prompt_tokens_details={"cached_tokens": 4, "cache_creation_tokens": 3},
    )
    assert cache_counts(usage) == (4, 3)
    assert cache_counts(Usage(prompt_tokens=10)) == (0, 0)


def test_key_input_and_durations() -> None:
    assert parse_duration("30d") == 30 * 86_400
    assert parse_duration("90") == 90 and parse_duration(15) == 15
    for bad in ("soon", "-1h", "0", "nand"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    settings = key_input({"rpm": 5, "expires_in": "1h", "models": ["a"]}, now=1000.0)
    assert (settings.rpm, settings.expires_at, settings.models) == (5, 4600.0, ["a"])
    with pytest.raises(Exception, match="rmp"):
        key_input({"rmp": 5}, now=0)
