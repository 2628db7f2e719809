"""Deleting a tenant (finding 4 of issue 12): its files, jobs with their results and batches
go with it, and a new tenant of the same name starts empty, whether the tenant was deleted
through the admin API (purged at once) or the CLI (unreachable at once, purged by the
api's sweeper)."""

from __future__ import annotations

from typing import Any

import httpx

from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.dispatcher import kv as kvs
from llmq.schemas import names
from tests.e2e.test_batches import batch_file, start_batch, wait_batch
from tests.e2e.test_jobs import chat, wait_job
from tests.stack import unique, wait_for

ADMIN = {"Authorization": "Bearer admin-secret"}


async def new_tenant(client: httpx.AsyncClient, name: str) -> tuple[dict[str, Any], str]:
    resp = await client.post("/admin/tenants", json={"name": name}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    key = await client.post(f"/admin/tenants/{name}/keys", json={}, headers=ADMIN)
    return resp.json(), key.json()["key"]


async def fill(client: httpx.AsyncClient, model: str, auth: dict[str, str]) -> dict[str, str]:
    """A file, a completed job and a completed batch (whose output is a file too)."""
    data, _ = batch_file(model, 2)
    batch = await start_batch(client, data, **auth)
    batch = await wait_batch(client, batch["id"], **auth)
    assert batch["status"] == "completed" and batch["output_file_id"]
    job = (await client.post("/v1/jobs", json=chat(model, "secret"), headers=auth)).json()
    assert (await wait_job(client, job["id"], **auth))["status"] == "completed"
    return {
        "file": batch["input_file_id"],
        "output": batch["output_file_id"],
        "batch": batch["id"],
        "job": job["id"],
    }


async def assert_empty(
    client: httpx.AsyncClient, ids: dict[str, str], auth: dict[str, str]
) -> None:
    for path in ("/v1/files", "/v1/jobs", "/v1/batches"):
        resp = await client.get(path, headers=auth)
        assert resp.status_code == 200 and resp.json()["data"] == [], (path, resp.text)
    for path in (
        f"/v1/files/{ids['file']}",
        f"/v1/files/{ids['file']}/content",
        f"/v1/files/{ids['output']}/content",
        f"/v1/jobs/{ids['job']}",
        f"/v1/batches/{ids['batch']}",
    ):
        assert (await client.get(path, headers=auth)).status_code == 404, path


async def stored_keys(api: Any, scope: str) -> list[str]:
    """What JetStream still holds under a tenant scope, in every tenant-keyed bucket."""
    wing = api.app.state.batches
    buckets = [wing.files.meta, wing.jobs.jobs, wing.store.bucket]
    pattern = names.tenant_keys_pattern(scope)
    return [k for b in buckets for k in await kvs.scan(b, pattern, meta_only=True)]


async def test_a_deleted_tenants_data_does_not_pass_to_the_next_of_its_name(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("l")
    name = unique("acme")
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token="admin-secret")
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as client:
        first, key = await new_tenant(client, name)
        ids = await fill(client, model, {"Authorization": f"Bearer {key}"})
        deleted = await client.delete(f"/admin/tenants/{name}", headers=ADMIN)
        assert deleted.status_code == 200
        second, key2 = await new_tenant(client, name)
        await assert_empty(client, ids, {"Authorization": f"Bearer {key2}"})
        # Not only unreachable: gone from JetStream.
        assert deleted.json()["purged"] == {"files": 2, "jobs": 1, "batches": 1}
        assert first["id"].startswith("t") and len(first["id"]) == 17
        assert second["id"] != first["id"]
        assert await stored_keys(api, names.tenant_scope(name, first["id"])) == []
        # The id cannot be changed by an update.
        resp = await client.patch(f"/admin/tenants/{name}", json={"id": first["id"]}, headers=ADMIN)
        assert resp.status_code == 400
        await client.delete(f"/admin/tenants/{name}", headers=ADMIN)


async def test_a_tenant_deleted_by_the_cli_is_unreachable_then_purged(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("l")
    name = unique("acme")
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=0, admin_token="admin-secret", file_expiry_sweep=0.3
    )
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=api.url, timeout=15) as client:
        first, key = await new_tenant(client, name)
        ids = await fill(client, model, {"Authorization": f"Bearer {key}"})
        assert await store.delete(name)  # what `llmq tenants delete` does: Redis only
        second = await store.create(Tenant(name=name))
        key2, _ = await store.create_key(name)
        await assert_empty(client, ids, {"Authorization": f"Bearer {key2}"})
        old_scope = names.tenant_scope(name, first["id"])

        async def purged() -> bool:
            return not await stored_keys(api, old_scope)

        await wait_for(purged, timeout=10)
        # Purged again on each sweep for a while: a batch running at the deletion may
        # still write its output file.
        assert old_scope in await store.deleted_scopes()
        assert second.id != first["id"]
        await store.delete(name)
    await redis.aclose()
