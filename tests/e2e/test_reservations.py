"""One reservation path, finished exactly once on each way a request arrives: interactive
chat, an async job, a batch line. Against the real servers: once everything has ended the
tenant's concurrency counter is back at 0 and the usage ledger holds exactly one entry per
job or line that was reserved — also for failures, cancels and client disconnects."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx

from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from tests.e2e.test_batches import (
    batch_file,
    jsonl,
    request_line,
    results_of,
    start_batch,
    wait_batch,
)
from tests.e2e.test_jobs import chat, wait_job
from tests.stack import unique, wait_for


async def _tenant(redis: Any, **limits: Any) -> tuple[str, dict[str, str]]:
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, **limits))
    key, _ = await store.create_key(name)
    return name, {"Authorization": f"Bearer {key}"}


async def _settled(redis: Any, tenant: str) -> None:
    async def idle() -> bool:
        return await Quota(redis).inflight(tenant) == 0

    await wait_for(idle, timeout=10)
    await asyncio.sleep(0.3)  # a late second release would show up now


async def _ledger(redis: Any, tenant: str) -> dict[str, list[str]]:
    """job id -> the statuses of its ledger entries."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for entry in await UsageReader(redis).ledger(tenant, count=100):
        found[entry.job_id].append(entry.status)
    return dict(found)


async def test_interactive_chat_reservations(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("r")
    redis = connect(redis_server.url)
    tenant, auth = await _tenant(redis, max_concurrent=4)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], capacity=4, echo_delay=0.05)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    ids: dict[str, str] = {}
    long_text = " ".join(f"w{i}" for i in range(60))
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        url = "/v1/chat/completions"
        for name, body in (("ok", chat(model, "a b")), ("ok2", chat(model, "c d e"))):
            resp = await client.post(url, json=body, headers=auth)
            assert resp.status_code == 200, resp.text
            ids[name] = resp.headers["x-request-id"]
        async with client.stream(
            "POST", url, json=chat(model, "f g", stream=True), headers=auth
        ) as resp:
            ids["streamed"] = resp.headers["x-request-id"]
            [line async for line in resp.aiter_lines()]
        async with client.stream(
            "POST", url, json=chat(model, long_text, stream=True), headers=auth
        ) as resp:
            ids["gone"] = resp.headers["x-request-id"]
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # the client goes away mid-stream
        refused = await client.post(url, json=chat("no-such-model", "x"), headers=auth)
        assert refused.status_code == 404  # refused before anything was reserved
    await _settled(redis, tenant)
    ledger = await _ledger(redis, tenant)
    assert ledger == {
        ids["ok"]: ["ok"],
        ids["ok2"]: ["ok"],
        ids["streamed"]: ["ok"],
        ids["gone"]: ["failed"],
    }
    await redis.aclose()


async def test_async_job_reservations(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("r")
    redis = connect(redis_server.url)
    tenant, auth = await _tenant(redis, max_concurrent=2)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    await stack.worker(model=[model], capacity=2, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    long_text = " ".join(f"w{i}" for i in range(40))
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        done = (await client.post("/v1/jobs", json=chat(model, "a b c d e f"), headers=auth)).json()
        cancelled = (
            await client.post("/v1/jobs", json=chat(model, long_text), headers=auth)
        ).json()
        # Both slots are held by queued or running jobs: refused, nothing reserved.
        refused = await client.post("/v1/jobs", json=chat(model, "x"), headers=auth)
        assert refused.status_code == 429
        await asyncio.sleep(0.3)
        resp = await client.delete(f"/v1/jobs/{cancelled['id']}", headers=auth)
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        assert (await wait_job(client, done["id"], **auth))["status"] == "completed"
    await _settled(redis, tenant)
    ledger = await _ledger(redis, tenant)
    assert ledger == {
        done["id"].removeprefix("job_"): ["ok"],
        cancelled["id"].removeprefix("job_"): ["failed"],
    }
    await redis.aclose()


async def test_batch_line_reservations(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("r")
    redis = connect(redis_server.url)
    tenant, auth = await _tenant(redis, max_concurrent=2)
    api = await stack.api(auth_mode="keys", key_cache_ttl=0)
    worker = await stack.worker(model=[model], capacity=2, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, _ = batch_file(model, 12, words=4)
    data += jsonl([request_line("invalid", "no-such-model", "x")])  # line 13: never reserved
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data, **auth)
        await wait_for(lambda: worker.outcomes.get("ok", 0) >= 3, timeout=15)
        resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
        assert resp.status_code == 200
        batch = await wait_batch(client, batch["id"], timeout=15, **auth)
        output, errors = await results_of(client, batch, **auth)
    assert batch["status"] == "cancelled" and 3 <= len(output) < 12
    assert len(output) + len(errors) == 13 and "invalid" in {e["custom_id"] for e in errors}
    await _settled(redis, tenant)
    ledger = await _ledger(redis, tenant)
    batch_hex = batch["id"].removeprefix("batch_")
    line_of = {f"req-{i}": i + 1 for i in range(12)}
    completed = {f"{batch_hex}-{line_of[line['custom_id']]}" for line in output}
    assert all(len(statuses) == 1 for statuses in ledger.values()), ledger
    assert {job for job, (status,) in ledger.items() if status == "ok"} == completed
    assert set(ledger) <= {f"{batch_hex}-{n}" for n in range(1, 13)}
    await redis.aclose()


# --- issue 12 finding 7: durable work keeps its slot past the reservation lease ------------

LEASE = 3.0
"""A short `reservation_lease`: without renewal a slot lapses after this many seconds."""


async def _tenant_api(stack, **overrides: Any):  # type: ignore[no-untyped-def]
    return await stack.api(auth_mode="keys", key_cache_ttl=0, reservation_lease=LEASE, **overrides)


async def test_a_waiting_async_job_keeps_its_slot_when_its_api_is_gone(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    """The job waits (no worker) for several leases; the api that reserved it stops, the
    other replica renews the slot: the tenant's one slot stays taken, and the job's
    reservation is released exactly once when it finally runs."""
    model = unique("r")
    redis = connect(redis_server.url)
    tenant, auth = await _tenant(redis, max_concurrent=1)
    worker = await stack.worker(model=[model])
    first = await _tenant_api(stack)
    second = await _tenant_api(stack)
    for api in (first, second):
        await wait_for(lambda api=api: api.runtime.registry.workers_for(model))
    await worker.close()
    await wait_for(lambda: not second.runtime.registry.workers_for(model))
    async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
        resp = await client.post("/v1/jobs", json=chat(model, "patient"), headers=auth)
        assert resp.status_code == 202, resp.text
        job = resp.json()
    await first.stop()  # the replica that reserved the job is gone
    await asyncio.sleep(LEASE * 2.5)
    assert await Quota(redis).inflight(tenant) == 1
    async with httpx.AsyncClient(base_url=second.url, timeout=10) as client:
        refused = await client.post("/v1/jobs", json=chat(model, "x"), headers=auth)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        await stack.worker(model=[model])
        done = await wait_job(client, job["id"], timeout=20, **auth)
        assert done["status"] == "completed"
    await _settled(redis, tenant)
    assert await _ledger(redis, tenant) == {job["id"].removeprefix("job_"): ["ok"]}
    await redis.aclose()


async def test_a_long_batch_line_keeps_its_slot(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    """A batch line that runs for several leases holds the tenant's one slot all along (an
    async job is refused meanwhile) and is booked once."""
    model = unique("r")
    redis = connect(redis_server.url)
    tenant, auth = await _tenant(redis, max_concurrent=1)
    api = await _tenant_api(stack)
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, _ = batch_file(model, 1, words=90)  # about 9 s of echo
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        batch = await start_batch(client, data, **auth)
        await wait_for(lambda: worker.runner.tasks, timeout=10)  # the line is running
        await asyncio.sleep(LEASE * 1.5)
        refused = await client.post("/v1/jobs", json=chat(model, "x"), headers=auth)
        assert worker.outcomes.get("ok", 0) == 0, "the line ended too early to tell"
        assert refused.status_code == 429, refused.text
        batch = await wait_batch(client, batch["id"], timeout=30, **auth)
    assert batch["status"] == "completed"
    await _settled(redis, tenant)
    batch_hex = batch["id"].removeprefix("batch_")
    assert await _ledger(redis, tenant) == {f"{batch_hex}-1": ["ok"]}
    await redis.aclose()
