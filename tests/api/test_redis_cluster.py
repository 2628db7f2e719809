"""Tenancy on a 3-master Valkey Cluster (`redis+cluster://`): every key a quota script
touches carries the tenant's hash tag, so no script crosses slots. The tenancy tests' core
flows (reserve, release, renew, usage, ledger, tenants and keys) run here unchanged against
the cluster, and a chat goes through the api with quotas on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis
from redis.cluster import key_slot

from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.api.tenancy.client import is_cluster
from llmq.embedded import EmbeddedRedis
from llmq.embedded_redis_ha import redis_cluster_url
from llmq.redis_keys import migrate
from llmq.schemas import names
from tests.api.tenancy.test_quota import (
    test_concurrency_slots,
    test_daily_budget_never_exceeded_under_concurrency,
    test_duplicate_reserve_counts_once,
    test_extend_lease,
    test_failed_release_returns_reserved_tokens,
    test_lease_reaping,
    test_monthly_and_spend_budgets,
    test_rpm_exact_across_two_processes,
    test_status_model_and_unknown_tenant,
    test_tpm_reconciled_with_actual_usage,
    test_unlimited_and_headers,
)
from tests.api.tenancy.test_store import (
    test_key_create_resolve_revoke,
    test_prices,
    test_suspended_tenant_still_resolves,
    test_tenant_crud,
)
from tests.api.tenancy.test_usage import test_ledger, test_usage_rows_and_cost
from tests.api.test_reservations import (
    test_another_replica_takes_over_and_never_revives_a_release,
    test_reserve_then_release_once,
)
from tests.stack import unique, wait_for

__all__ = [  # the shared flows, collected here a second time against the cluster
    "test_another_replica_takes_over_and_never_revives_a_release",
    "test_concurrency_slots",
    "test_daily_budget_never_exceeded_under_concurrency",
    "test_duplicate_reserve_counts_once",
    "test_extend_lease",
    "test_failed_release_returns_reserved_tokens",
    "test_key_create_resolve_revoke",
    "test_lease_reaping",
    "test_ledger",
    "test_monthly_and_spend_budgets",
    "test_prices",
    "test_reserve_then_release_once",
    "test_rpm_exact_across_two_processes",
    "test_status_model_and_unknown_tenant",
    "test_suspended_tenant_still_resolves",
    "test_tenant_crud",
    "test_tpm_reconciled_with_actual_usage",
    "test_unlimited_and_headers",
    "test_usage_rows_and_cost",
]


@pytest.fixture
def redis_server(redis_cluster: list[EmbeddedRedis]) -> SimpleNamespace:
    """The flows that start their own clients (other processes, the stack) get the cluster."""
    return SimpleNamespace(url=redis_cluster_url(redis_cluster))


@pytest.fixture
async def redis(redis_cluster: list[EmbeddedRedis]) -> AsyncIterator[Redis]:
    """Overrides the single-server client of the shared flows with a Cluster client."""
    client = connect(redis_cluster_url(redis_cluster), timeout=10.0)
    assert is_cluster(client)
    yield client
    await client.aclose()


@pytest.fixture
def tenant_name() -> str:
    return unique("t")


@pytest.fixture
def store(redis: Redis) -> TenantStore:
    return TenantStore(redis)


@pytest.fixture
def quota(redis: Redis) -> Quota:
    return Quota(redis)


@pytest.fixture
def usage(redis: Redis) -> UsageReader:
    return UsageReader(redis)


def test_a_tenants_keys_share_one_slot() -> None:
    tenant = "acme.eu@x-1"
    keys = [
        names.tenant_key(tenant),
        names.tenant_api_keys_key(tenant),
        names.inflight_key(tenant),
        names.window_key(tenant, 29_000_000),
        names.day_quota_key(tenant, "2026-11-28"),
        names.month_quota_key(tenant, "2026-11"),
        names.reservation_key(tenant, "job-1"),
        names.usage_key(tenant, "2026-11-28"),
        names.tenant_ledger_key(tenant),
    ]
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"acme.eu@x-1")}
    assert key_slot(names.tenant_key("other").encode()) != key_slot(keys[0].encode())


async def test_renewals_of_many_tenants_stay_in_their_slots(
    store: TenantStore, quota: Quota
) -> None:
    """One renewal round over several tenants: one script call per tenant, answers in
    the order asked; a released reservation is not revived."""
    tenants = [unique("renew") for _ in range(3)]
    for tenant in tenants:
        await store.create(Tenant(name=tenant))
    held = [(t, f"job-{i}") for i in range(5) for t in tenants]  # tenants interleaved
    for tenant, job_id in held:
        assert (await quota.reserve(tenant, "m", 1, 1, job_id, lease=30.0)).allowed
    assert await quota.release(tenants[1], "m", "job-3", 1, 1)
    kept = await quota.renew(held, 120.0)
    assert kept == [(t, j) != (tenants[1], "job-3") for t, j in held]
    assert [await quota.inflight(t) for t in tenants] == [5, 4, 5]


async def test_the_tenants_spread_over_the_masters(
    redis: Redis, store: TenantStore, quota: Quota, redis_cluster: list[EmbeddedRedis]
) -> None:
    """Many tenants reserve and release: their keys land on every master (so the flows
    above did cross nodes), and the global ledger has each release once."""
    tenants = [unique("spread") for _ in range(12)]
    for tenant in tenants:
        await store.create(Tenant(name=tenant, rpm=10))
        assert (await quota.reserve(tenant, "m", 3, 4, "job")).allowed
        assert await quota.release(tenant, "m", "job", 3, 2)
    owners = set()
    for tenant in tenants:
        slot = key_slot(names.inflight_key(tenant).encode())
        owners.add(redis.get_node_from_key(names.inflight_key(tenant)).port)  # type: ignore[attr-defined]
        assert 0 <= slot < 16384
    assert owners == {node.port for node in redis_cluster}
    ledger = await UsageReader(redis).ledger(None, count=1000)
    assert {e.tenant for e in ledger} >= set(tenants)
    assert sum(1 for e in ledger if e.tenant in tenants) == len(tenants)
    assert set(tenants) <= {t.name for t in await store.list_tenants()}
    assert await store.delete(tenants[0])
    assert await store.get(tenants[0]) is None


async def test_chat_with_quotas_through_the_api(
    stack: Any, redis_cluster: list[EmbeddedRedis]
) -> None:
    assert stack.redis_url == redis_cluster_url(redis_cluster)
    api = await stack.api(auth_mode="keys")
    model = unique("cluster")
    await stack.worker(model=[model])
    admin = connect(stack.redis_url)
    try:
        store = TenantStore(admin)
        tenant = unique("cl")
        await store.create(Tenant(name=tenant, rpm=2, max_concurrent=4))
        key, _ = await store.create_key(tenant, label="cluster chat")
        await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
        async with httpx.AsyncClient() as http:
            ready = (await http.get(f"{api.url}/ready")).json()
        assert ready["redis"] is True, ready
        client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
        messages: Any = [{"role": "user", "content": "over a cluster"}]
        for _ in range(2):
            reply = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, timeout=30
            )
            assert reply.headers["x-ratelimit-limit-requests"] == "2"
            assert reply.parse().choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model=model, messages=messages, timeout=30)
        assert refused.value.status_code == 429

        async def booked() -> bool:
            rows = await UsageReader(admin).usage(tenant, days=1)
            return sum(r.requests for r in rows) == 2

        await wait_for(booked, timeout=20)
        assert await Quota(admin).inflight(tenant) == 0
    finally:
        await admin.aclose()


async def test_old_key_names_are_migrated(tmp_path: Path) -> None:
    """A deployment from before hash tags: after `llmq.redis_keys` the tenant, its key, its
    open reservation (released afterwards) and its usage are all found under the tagged
    names. (Since the GCRA rates the release reconciles the tenant's rate hash, not a minute
    window: its slot and its usage are what show the migrated reservation was found.)"""
    server = EmbeddedRedis(tmp_path / "old-layout")
    redis = connect(server.url, timeout=10.0)
    try:
        store, quota = TenantStore(redis), Quota(redis)
        tenant = unique("old")
        await store.create(Tenant(name=tenant, tpm=1000))
        key, _ = await store.create_key(tenant)
        assert (await quota.reserve(tenant, "m", 10, 90, "before")).allowed
        assert (await quota.reserve(tenant, "m", 10, 90, "open")).allowed
        assert await quota.release(tenant, "m", "before", 10, 5)
        # Back to the names the previous version wrote: the tenant without braces.
        for name in [str(k) async for k in redis.scan_iter(match="llmq:*{*}*")]:
            await redis.rename(name, name.replace("{", "").replace("}", ""))
        reservation = names.reservation_key(tenant, "open").replace("{", "").replace("}", "")
        for f in ("win", "day", "month"):
            old = str(await redis.hget(reservation, f))
            await redis.hset(reservation, f, old.replace("{", "").replace("}", ""))
        assert await store.get(tenant) is None  # the new layout does not see the old keys

        assert (await migrate(redis, dry_run=True)).renamed >= 7
        done = await migrate(redis)
        assert done.conflicts == [] and done.renamed >= 7
        assert (await store.resolve_key(key)) == await store.get(tenant) is not None
        assert await quota.inflight(tenant) == 1
        assert await quota.release(tenant, "m", "open", 10, 20)  # reserved 100, used 30
        assert await quota.inflight(tenant) == 0
        rows = await UsageReader(redis).usage(tenant, days=1)
        assert sum(r.requests for r in rows) == 2
        assert (await migrate(redis)).renamed == 0  # a second run finds nothing to do
    finally:
        await redis.aclose()
        server.stop()
