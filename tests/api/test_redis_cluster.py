"""Tenancy on a 3-master Valkey Cluster (`redis+cluster://`): every key a quota script
touches carries the tenant's hash tag, so no script crosses slots. The tenancy tests' core
flows (reserve, release, renew, usage, ledger, tenants and keys) run here unchanged against
the cluster, and a chat goes through the api with quotas on."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis
from redis.cluster import key_slot

from llmq.api.tenancy import (
    Quota,
    Tenant,
    TenantStore,
    UsageReader,
    check_at_start,
    connect,
    connect_with,
)
from llmq.api.tenancy.client import is_cluster
from llmq.cli import main as cli_main
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names
from llmq.schemas.settings import ConnectionSettings
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
from tests.api.tenancy.test_quota_scripts import (
    test_counters_get_their_expiry_in_the_call_that_makes_them,
    test_reconcile_skips_a_counter_that_expired,
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
from tests.redis_ha import redis_cluster_url, start_redis_cluster
from tests.stack import unique, wait_for

__all__ = [  # the shared flows, collected here a second time against the cluster
    "test_another_replica_takes_over_and_never_revives_a_release",
    "test_concurrency_slots",
    "test_counters_get_their_expiry_in_the_call_that_makes_them",
    "test_daily_budget_never_exceeded_under_concurrency",
    "test_duplicate_reserve_counts_once",
    "test_extend_lease",
    "test_failed_release_returns_reserved_tokens",
    "test_key_create_resolve_revoke",
    "test_lease_reaping",
    "test_ledger",
    "test_monthly_and_spend_budgets",
    "test_prices",
    "test_reconcile_skips_a_counter_that_expired",
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
    masters = {node.port for node in redis_cluster}
    await redis.initialize()  # the slot map, before any command
    tenants: list[str] = []
    owners: set[int] = set()
    # Random names: take them until every master owns one (12 left one out 2 % of the time).
    while owners != masters and len(tenants) < 200:
        tenant = unique("spread")
        tenants.append(tenant)
        assert 0 <= key_slot(names.inflight_key(tenant).encode()) < 16384
        owners.add(redis.get_node_from_key(names.inflight_key(tenant)).port)  # type: ignore[attr-defined]
    assert owners == masters
    for tenant in tenants:
        await store.create(Tenant(name=tenant, rpm=10))
        assert (await quota.reserve(tenant, "m", 3, 4, "job")).allowed
        assert await quota.release(tenant, "m", "job", 3, 2)
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


async def test_a_password_protected_cluster(
    tmp_path: Path, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`requirepass` on every node: LLMQ_REDIS_PASSWORD serves; a missing or wrong one is a
    clear error at start (not a hang), `/ready` fails on `redis` and a chat gets a clean
    503, never a 500."""
    password = "cl-" + uuid.uuid4().hex
    nodes = start_redis_cluster(tmp_path / "locked-cluster", password=password)
    try:
        url = redis_cluster_url(nodes)
        good = connect_with(ConnectionSettings(redis_url=url, redis_password=password))
        try:
            assert await check_at_start(good, url, 5.0)
            tenant = unique("locked")
            await TenantStore(good).create(Tenant(name=tenant))
            key, _ = await TenantStore(good).create_key(tenant, label="locked cluster")
        finally:
            await good.aclose()
        caplog.set_level(logging.INFO)
        for wrong in ("", "wrong"):
            caplog.clear()
            bad = connect_with(ConnectionSettings(redis_url=url, redis_password=wrong))
            started = time.monotonic()
            assert not await check_at_start(bad, url, 5.0)
            assert time.monotonic() - started < 5
            await bad.aclose()
            assert f"Redis at {url} refused authentication" in caplog.text, caplog.text
            assert "LLMQ_REDIS_PASSWORD" in caplog.text
        stack.redis_url = url
        api = await stack.api(auth_mode="keys", redis_password="wrong")
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{api.url}/ready")
            assert ready.status_code == 503 and ready.json()["failing"] == ["redis"]
            resp = await http.post(
                f"{api.url}/v1/chat/completions",
                json={"model": "any", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {key}"},
                timeout=20,
            )
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "tenant_store_down"
        assert password not in caplog.text
    finally:
        for node in nodes:
            node.stop()


def test_migrate_keys_refuses_a_cluster(
    redis_cluster: list[EmbeddedRedis], capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmq redis migrate-keys`: a rename cannot cross slots, so it says to migrate on the
    single server before moving into a Cluster (exit 2), changing nothing."""
    url = redis_cluster_url(redis_cluster)
    assert cli_main(["redis", "migrate-keys", "--dry-run", "--redis-url", url]) == 2
    assert "is a Cluster: migrate the keys on the single server" in capsys.readouterr().err
