"""When each API key was last used: stamped by the job's release (the script that books its
usage, off the request path), never by the reservation on the request path; shown by
`list_keys` and forgotten with the key or its tenant — against a real Valkey."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Quota, Tenant, TenantStore
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names

T0 = float(int(time.time()) + 60)


async def _last_used(store: TenantStore, tenant: str) -> dict[str, float]:
    return {k.id: k.last_used_at for k in await store.list_keys(tenant)}


async def test_release_stamps_the_keys_last_use(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    _, used = await store.create_key(tenant_name, "used")
    _, idle = await store.create_key(tenant_name, "idle")
    assert await _last_used(store, tenant_name) == {used.id: 0.0, idle.id: 0.0}

    decision = await quota.reserve(tenant_name, "m", 5, 5, "job-1", now=T0, key_id=used.id)
    assert decision.allowed
    # The request path (reserve) writes nothing: the stamp comes with the release.
    assert await _last_used(store, tenant_name) == {used.id: 0.0, idle.id: 0.0}
    assert await quota.release(tenant_name, "m", "job-1", 5, 3, now=T0 + 1.25)
    assert await _last_used(store, tenant_name) == {used.id: T0 + 1.25, idle.id: 0.0}

    # A second release of the same job (the booker after the relaying api) changes nothing.
    assert not await quota.release(tenant_name, "m", "job-1", 5, 3, now=T0 + 9)
    assert (await _last_used(store, tenant_name))[used.id] == T0 + 1.25

    # A job without a key (auth off, or an admin job) stamps no key; the next job of the key does.
    assert (await quota.reserve(tenant_name, "m", 1, 1, "job-2", now=T0 + 2)).allowed
    assert await quota.release(tenant_name, "m", "job-2", 1, 1, now=T0 + 3)
    third = await quota.reserve(tenant_name, "m", 1, 1, "job-3", now=T0 + 4, key_id=used.id)
    assert third.allowed
    assert await quota.release(tenant_name, "m", "job-3", 1, 1, now=T0 + 5.5)
    assert await _last_used(store, tenant_name) == {used.id: T0 + 5.5, idle.id: 0.0}


async def test_stamp_goes_with_the_key_and_the_tenant(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    _, first = await store.create_key(tenant_name)
    _, second = await store.create_key(tenant_name)
    for i, key in enumerate((first, second)):
        assert (await quota.reserve(tenant_name, "m", 1, 1, f"j{i}", now=T0, key_id=key.id)).allowed
        assert await quota.release(tenant_name, "m", f"j{i}", 1, 1, now=T0 + i)
    stamps = names.key_last_used_key(tenant_name)
    assert set(await redis.hkeys(stamps)) == {first.id, second.id}

    assert await store.revoke_key(tenant_name, first.id)
    assert await redis.hkeys(stamps) == [second.id]
    assert await store.delete(tenant_name)
    assert not await redis.exists(stamps)


@pytest.mark.parametrize("tenant", ["acme", "a.b@c-d"])
def test_last_used_key_is_in_the_tenants_slot(tenant: str) -> None:
    """In a Cluster the release script may only touch the tenant's slot."""
    assert names.tenant_tag(tenant) in names.key_last_used_key(tenant)


async def test_llmq_keys_list_shows_last_use(
    store: TenantStore, quota: Quota, redis_server: EmbeddedRedis, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    _, key = await store.create_key(tenant_name, "cli")
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j", now=T0, key_id=key.id)).allowed
    assert await quota.release(tenant_name, "m", "j", 1, 1, now=T0 + 0.5)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llmq.cli", "keys", "list", tenant_name, "--json"],
        env={**os.environ, "LLMQ_REDIS_URL": redis_server.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [(k["id"], k["last_used_at"]) for k in json.loads(done.stdout)] == [(key.id, T0 + 0.5)]
