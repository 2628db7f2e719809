"""API keys with limits of their own, end to end: created with `llmq keys create`, enforced
exactly across two api processes inside the tenant's limits, expired on time although the
apis cache keys, refused for models outside the key's list; usage per end user queryable
with `llmq usage --by user` and the admin API."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from llmq.api.tenancy import KeySettings, Quota, Tenant, TenantStore, connect
from tests.stack import unique, wait_for, wait_serving

ADMIN = "admin-secret"


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield client
    await client.aclose()


def _llmq(redis_url: str, *args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args, "--json"],
        env={**os.environ, "LLMQ_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def _two_apis(stack, model: str, headers: dict[str, str]) -> list[str]:  # type: ignore[no-untyped-def]
    # The default key cache (the apis keep each key's record for a while).
    apis = await asyncio.gather(
        *(stack.api_process(auth_mode="keys", heartbeat=2.0, admin_token=ADMIN) for _ in "ab")
    )
    urls = [api.url for api in apis]
    for url in urls:
        await wait_serving(url, model, timeout=60, headers=headers)
    return urls


def _chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra}


async def test_key_limits_exact_across_two_api_processes(stack, redis, redis_server) -> None:  # type: ignore[no-untyped-def]
    model, other = unique("m"), unique("other")
    await stack.worker(model=[model, other], capacity=16)
    tenant = unique("t")
    await TenantStore(redis).create(Tenant(name=tenant, rpm=1000, models=[model, other]))
    limited = _llmq(
        redis_server.url, "keys", "create", tenant, "--rpm", "4", "--tpm", "100000",
        "--expires-in", "30d", "--models", model, "--label", "ci", "--owner", "team-a",
    )  # fmt: skip
    assert (limited["rpm"], limited["models"], limited["owner"]) == (4, [model], "team-a")
    assert limited["expires_at"] == pytest.approx(time.time() + 30 * 86_400, abs=60)
    listed = _llmq(redis_server.url, "keys", "list", tenant)
    assert [(k["id"], k["rpm"], k["label"]) for k in listed] == [(limited["id"], 4, "ci")]
    free_key = _llmq(redis_server.url, "keys", "create", tenant)["key"]
    limited_h = {"authorization": f"Bearer {limited['key']}"}
    free_h = {"authorization": f"Bearer {free_key}"}
    urls = await _two_apis(stack, model, free_h)

    # 40 concurrent requests on one key with RPM 4, half on each api: exactly 4 pass, plus
    # what the bucket refilled while the burst ran (one per 15 s; none on a quiet machine).
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as client:
        resps = await asyncio.gather(
            *[
                client.post(f"{urls[i % 2]}/v1/chat/completions", json=_chat(model), headers=h)
                for i, h in enumerate([limited_h] * 40)
            ]
        )
        elapsed = time.monotonic() - started
        codes = [r.status_code for r in resps]
        refilled = math.floor(elapsed / 15)
        assert 4 <= codes.count(200) <= 4 + refilled, (codes, elapsed)
        assert codes.count(429) == 40 - codes.count(200)
        refused = [r for r in resps if r.status_code == 429]
        assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
        assert "of this API key" in refused[0].json()["error"]["message"]
        assert int(refused[0].headers["retry-after"]) >= 1
        assert refused[0].headers["x-ratelimit-limit-requests"] == "4"

        # The tenant has room: its other key is served on both apis.
        for url in urls:
            ok = await client.post(f"{url}/v1/chat/completions", json=_chat(model), headers=free_h)
            assert ok.status_code == 200, ok.text

    # The key's model list, with the openai SDK: 403 model_not_allowed, as for tenants.
    sdk = openai.AsyncOpenAI(base_url=f"{urls[0]}/v1", api_key=free_key, max_retries=0)
    limited_sdk = openai.AsyncOpenAI(
        base_url=f"{urls[1]}/v1", api_key=limited["key"], max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await limited_sdk.chat.completions.create(
            model=other, messages=[{"role": "user", "content": "x"}]
        )
    assert denied.value.code == "model_not_allowed"

    # End users: the request's `user` field is booked per user.
    for user in ("alice", "alice", "bob"):
        await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "a b c"}], user=user
        )
    await sdk.close()
    await limited_sdk.close()
    await wait_for(lambda: _idle(redis, tenant), timeout=30)
    by_user = {r["model"]: r for r in _llmq(redis_server.url, "usage", tenant, "--by", "user")}
    assert {u: r["requests"] for u, r in by_user.items()} == {"alice": 2, "bob": 1}
    async with httpx.AsyncClient(base_url=urls[0], timeout=30) as client:
        admin = {"authorization": f"Bearer {ADMIN}"}
        by_key = (await client.get(f"/admin/tenants/{tenant}/usage?by=key", headers=admin)).json()
        per_key = {r["model"]: r["requests"] for r in by_key["data"]}
        assert per_key[limited["id"]] == codes.count(200)
        bad = await client.get(f"/admin/tenants/{tenant}/usage?by=nobody", headers=admin)
        assert bad.status_code == 400


async def _idle(redis, tenant: str) -> bool:  # type: ignore[no-untyped-def]
    return await Quota(redis).inflight(tenant) == 0


async def test_expired_key_refused_on_both_apis_despite_the_cache(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    tenant = unique("t")
    store = TenantStore(redis)
    await store.create(Tenant(name=tenant))
    key, _ = await store.create_key(tenant, settings=KeySettings(expires_at=time.time() + 3600))
    # Two apis in this process, each with its own key cache (per api, so no child processes
    # are needed), holding the key's record well past its expiry.
    apis = [
        await stack.api(auth_mode="keys", admin_token=ADMIN, key_cache_ttl=60) for _ in range(2)
    ]
    for api in apis:
        await wait_for(lambda api=api: api.runtime.registry.workers_for(model))
    urls = [api.url for api in apis]
    expiring, record = await store.create_key(
        tenant, settings=KeySettings(expires_at=time.time() + 4)
    )
    headers = {"authorization": f"Bearer {expiring}"}
    chat = _chat(model)
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:  # each api now caches the key's record
            ok = await client.post(f"{url}/v1/chat/completions", json=chat, headers=headers)
            assert ok.status_code == 200, ok.text
        await asyncio.sleep(max(0.0, record.expires_at - time.time() + 0.1))
        for url in urls:
            gone = await client.post(f"{url}/v1/chat/completions", json=chat, headers=headers)
            assert gone.status_code == 401
            assert gone.json()["error"]["code"] == "invalid_api_key"
        still = await client.post(
            f"{urls[0]}/v1/chat/completions",
            json=chat,
            headers={"authorization": f"Bearer {key}"},
        )
        assert still.status_code == 200
