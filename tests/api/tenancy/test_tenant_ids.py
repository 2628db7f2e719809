"""Tenant ids and scopes against a real Valkey: every created tenant gets a new immutable
id, a tenant stored before ids existed keeps its name as its scope, deleting a tenant
queues its scope for the purge, and `storage_bytes` is a limit like the others."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Tenant, TenantStore
from llmq.schemas import names


async def test_each_tenant_of_a_name_gets_a_new_id(store: TenantStore, tenant_name: str) -> None:
    first = await store.create(Tenant(name=tenant_name, id="chosen-by-caller"))
    assert first.id.startswith("t") and first.id != "chosen-by-caller"
    assert await store.scope(tenant_name) == f"{tenant_name}~{first.id}"
    with pytest.raises(ValueError):
        await store.update(tenant_name, {"id": "other"})
    assert (await store.update(tenant_name, {"rpm": 3})).id == first.id
    assert await store.delete(tenant_name)
    assert f"{tenant_name}~{first.id}" in await store.deleted_scopes()
    second = await store.create(Tenant(name=tenant_name))
    assert second.id != first.id
    assert await store.scope(tenant_name) == f"{tenant_name}~{second.id}"
    await store.forget_deleted_scope(f"{tenant_name}~{first.id}")
    assert f"{tenant_name}~{first.id}" not in await store.deleted_scopes()
    await store.delete(tenant_name)
    await store.forget_deleted_scope(f"{tenant_name}~{second.id}")


async def test_a_tenant_from_before_ids_keeps_its_namespace(
    store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    await redis.hset(names.tenant_key(tenant_name), mapping={"name": tenant_name, "rpm": "5"})
    await redis.sadd(names.TENANTS_KEY, tenant_name)
    legacy = await store.get(tenant_name)
    assert legacy is not None and legacy.id == "" and legacy.rpm == 5
    assert await store.scope(tenant_name) == tenant_name
    assert await store.scope("no-such-tenant") == "no-such-tenant"
    assert await store.delete(tenant_name)
    assert tenant_name in await store.deleted_scopes()
    await store.forget_deleted_scope(tenant_name)


async def test_storage_quota_is_a_tenant_limit(store: TenantStore, tenant_name: str) -> None:
    created = await store.create(Tenant(name=tenant_name, storage_bytes=1_000_000))
    assert (await store.get(tenant_name)) == created and created.storage_bytes == 1_000_000
    assert (await store.update(tenant_name, {"storage_bytes": 0})).storage_bytes == 0
    with pytest.raises(ValueError):
        await store.update(tenant_name, {"storage_bytes": -1})
    await store.delete(tenant_name)
    await store.forget_deleted_scope(names.tenant_scope(tenant_name, created.id))


def test_scopes_round_trip_to_the_name() -> None:
    assert names.tenant_scope("acme", "") == "acme"
    assert names.tenant_of_scope(names.tenant_scope("acme", "t01")) == "acme"
    token = names.tenant_token(names.tenant_scope("a.b", "t01"))
    assert "." not in token and names.tenant_from_token(token) == "a.b~t01"


def test_the_cli_sets_the_storage_quota(redis_server, capsys, tenant_name: str) -> None:  # type: ignore[no-untyped-def]
    from llmq.cli import main

    url = ["--redis-url", redis_server.url, "--json"]
    assert main(["tenants", "create", tenant_name, "--storage-bytes", "5000", *url]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["storage_bytes"] == 5000 and created["id"].startswith("t")
    assert main(["tenants", "update", tenant_name, "--storage-bytes", "0", *url]) == 0
    assert json.loads(capsys.readouterr().out)["storage_bytes"] == 0
    assert main(["tenants", "delete", tenant_name, *url]) == 0
