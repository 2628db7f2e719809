"""Tenants end to end: keys and trusted headers, exact quotas across api processes,
slots that are always released, Redis outages, the admin API and the CLI."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from llmq.api.preparation import estimate_prompt_tokens
from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.cli import main
from llmq.embedded import EmbeddedRedis
from llmq.schemas.openai import chat_request_decoder
from llmq.worker.backends.base import BackendConfig
from tests.stack import refused_port, unique, wait_for, wait_serving

ADMIN = "admin-secret"


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield client
    await client.aclose()


async def _tenant(redis, **limits: object) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, **limits))  # type: ignore[arg-type]
    key, _ = await store.create_key(name)
    return name, key


async def _keyed(stack, model: str, **overrides: object):  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN, **overrides)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    return api


def _chat(model: str, text: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_key_auth_401_and_revocation(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    api = await _keyed(stack, model)
    tenant, key = await _tenant(redis)
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient() as client:
        resp = await client.post(url, json=_chat(model))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
        resp = await client.post(
            url, json=_chat(model), headers={"authorization": "Bearer sk-llmq-wrong"}
        )
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key)
    reply = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "keyed"}]
    )
    assert reply.choices[0].message.content == "keyed"
    store = TenantStore(redis)
    (record,) = await store.list_keys(tenant)
    await store.revoke_key(tenant, record.id)
    with pytest.raises(openai.AuthenticationError):
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    await sdk.close()


async def test_a_key_revoked_by_the_cli_is_refused_within_a_second(
    stack, redis, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """`llmq keys revoke` changes Redis and tells every api on NATS (`llmq.auth.changed`):
    a running api whose cache holds the key for 30 s refuses it within 1 s, also on a call
    that never reaches the quota script (which checks the key itself)."""
    model = unique("m")
    await stack.worker(model=[model])
    api = await stack.api(auth_mode="keys", key_cache_ttl=30.0)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    tenant, key = await _tenant(redis)
    (record,) = await TenantStore(redis).list_keys(tenant)
    monkeypatch.setenv("LLMQ_NATS_URL", stack.nats_url)
    monkeypatch.setenv("LLMQ_REDIS_URL", stack.redis_url)
    url, user = f"{api.url}/v1/chat/completions", {"authorization": f"Bearer {key}"}
    models = f"{api.url}/v1/models"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(url, json=_chat(model), headers=user)).status_code == 200
        assert (await client.get(models, headers=user)).status_code == 200
        assert await asyncio.to_thread(main, ["keys", "revoke", tenant, record.id]) == 0
        revoked = time.monotonic()
        while (resp := await client.get(models, headers=user)).status_code != 401:
            assert resp.status_code == 200, resp.text
            assert time.monotonic() - revoked < 1.0, "the revoked key still works"
            await asyncio.sleep(0.05)
    assert resp.json()["error"]["code"] == "invalid_api_key"


async def test_trusted_header_mode(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    store = TenantStore(redis)
    allowed, fallback = unique("t"), unique("t")
    await store.create(Tenant(name=allowed))
    await store.create(Tenant(name=fallback))
    api = await stack.api(
        auth_mode="header",
        tenant_header="X-Team",
        trusted_tenants=[allowed, fallback],
        default_tenant=fallback,
    )
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient() as client:
        assert (
            await client.post(url, json=_chat(model), headers={"X-Team": allowed})
        ).status_code == 200
        assert (await client.post(url, json=_chat(model))).status_code == 200
        denied = await client.post(url, json=_chat(model), headers={"X-Team": "intruder"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "tenant_not_allowed"
    usage = UsageReader(redis)
    assert sum(r.requests for r in await usage.usage(allowed, days=1)) == 1
    assert sum(r.requests for r in await usage.usage(fallback, days=1)) == 1


async def test_rate_limit_headers_and_429(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    api = await _keyed(stack, model)
    _tenant_name, key = await _tenant(redis, rpm=2, tpm=100_000)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient() as client:
        url = f"{api.url}/v1/chat/completions"
        first = await client.post(url, json=_chat(model), headers=headers)
        assert first.status_code == 200
        for name in ("requests", "tokens"):
            assert first.headers[f"x-ratelimit-limit-{name}"]
            assert first.headers[f"x-ratelimit-remaining-{name}"]
            assert first.headers[f"x-ratelimit-reset-{name}"]
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert (await client.post(url, json=_chat(model), headers=headers)).status_code == 200
        third = await client.post(url, json=_chat(model), headers=headers)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"


async def test_rpm_exact_across_two_api_processes(stack, redis) -> None:  # type: ignore[no-untyped-def]
    """500 concurrent requests, RPM = 50, two api processes: exactly 50 pass."""
    model = unique("m")
    # Separate processes with a relaxed heartbeat: this test loads both cores on purpose.
    stack.process("worker", "--model", model, "--capacity", "16", heartbeat=5.0)
    _t, key = await _tenant(redis, rpm=50)
    apis = await asyncio.gather(*(stack.api_process(auth_mode="keys", heartbeat=5.0) for _ in "ab"))
    urls = [api.url for api in apis]
    headers = {"authorization": f"Bearer {key}"}
    for url in urls:
        await wait_serving(url, model, headers=headers)
    # RPM is a GCRA rate (no minute boundary to straddle): exactly 50 pass at once, and one
    # more per 1.2 s of the burst (none when it is quick; the bound keeps a loaded machine
    # from failing the test, not the limit from being exact).
    # A new connection per request: a kept-alive one that sat idle past uvicorn's keep-alive
    # timeout while a loaded machine stalled is closed under the next request (a ReadError
    # that says nothing about the limit).
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        resps = await asyncio.gather(
            *[
                client.post(
                    f"{urls[i % 2]}/v1/chat/completions", json=_chat(model), headers=headers
                )
                for i in range(500)
            ]
        )
    refilled = int((time.monotonic() - started) / 1.2)
    codes = [r.status_code for r in resps]
    assert 50 <= codes.count(200) <= 50 + refilled, {c: codes.count(c) for c in set(codes)}
    assert codes.count(429) == 500 - codes.count(200), [
        r.text for r in resps if r.status_code not in (200, 429)
    ][:3]
    assert {r.json()["error"]["code"] for r in resps if r.status_code == 429} == {
        "rate_limit_exceeded"
    }
    served_by = {i % 2 for i, r in enumerate(resps) if r.status_code == 200}
    assert served_by == {0, 1}


async def test_max_concurrent_is_never_exceeded(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    worker = await stack.worker(model=[model], capacity=12, echo_delay=0.2)
    api = await _keyed(stack, model)
    tenant, key = await _tenant(redis, max_concurrent=3)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.gather(
            *[
                client.post(
                    f"{api.url}/v1/chat/completions", json=_chat(model, "a b c"), headers=headers
                )
                for _ in range(30)
            ]
        )
        codes = [r.status_code for r in resps]
        assert codes.count(200) == 3 and codes.count(429) == 27
        assert worker.scheduler.peak <= 3
        # Rejected callers that retry later get through, three at a time.
        retry = await asyncio.gather(
            *[
                client.post(
                    f"{api.url}/v1/chat/completions", json=_chat(model, "a"), headers=headers
                )
                for _ in range(3)
            ]
        )
        assert [r.status_code for r in retry] == [200, 200, 200]
    await wait_for(lambda: _inflight(redis, tenant, 0))


async def _inflight(redis, tenant: str, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return await Quota(redis).inflight(tenant) == expected


async def test_daily_budget_not_exceeded_under_concurrency(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model], capacity=16)
    api = await _keyed(stack, model)
    tenant, key = await _tenant(redis, daily_tokens=200)
    headers = {"authorization": f"Bearer {key}"}
    words = " ".join(["w"] * 8)
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.gather(
            *[
                client.post(
                    f"{api.url}/v1/chat/completions",
                    json=_chat(model, words, max_tokens=10),
                    headers=headers,
                )
                for _ in range(60)
            ]
        )
    codes = [r.status_code for r in resps]
    assert codes.count(200) >= 1 and codes.count(429) >= 1
    assert {r.json()["error"]["code"] for r in resps if r.status_code == 429} == {
        "insufficient_quota"
    }
    await wait_for(lambda: _inflight(redis, tenant, 0))
    rows = await UsageReader(redis).usage(tenant, days=1)
    used = sum(r.prompt_tokens + r.completion_tokens for r in rows)
    one_reservation = (
        estimate_prompt_tokens(chat_request_decoder.decode(json.dumps(_chat(model, words)))) + 10
    )
    assert used <= 200 + one_reservation


async def test_slots_released_after_every_kind_of_failure(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model, broken = unique("m"), unique("broken")
    await stack.worker(model=[model], echo_delay=0.2)
    dead_upstream = BackendConfig(kind="openai", url=f"http://127.0.0.1:{refused_port()}/v1")
    from llmq.worker.main import Worker
    from tests.stack import settings as make_settings

    bad = Worker(make_settings(stack.nats_url, stack.redis_url, model=[broken]), dead_upstream)
    await bad.start()
    stack.workers.append(bad)
    api = await _keyed(stack, model, deadline=1.0, max_deadline=1.0)  # a started job is cut
    await wait_for(lambda: api.runtime.registry.workers_for(broken))
    tenant, key = await _tenant(redis, max_concurrent=5)
    headers = {"authorization": f"Bearer {key}"}
    long_text = " ".join(f"w{i}" for i in range(50))
    async with httpx.AsyncClient(timeout=30) as client:
        url = f"{api.url}/v1/chat/completions"
        failed = await client.post(url, json=_chat(broken), headers=headers)
        assert failed.status_code == 502
        timed_out = await client.post(url, json=_chat(model, long_text), headers=headers)
        assert timed_out.status_code == 504
        async with client.stream(
            "POST", url, json=_chat(model, long_text, stream=True), headers=headers
        ) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break
    await wait_for(lambda: _inflight(redis, tenant, 0), timeout=5)
    ledger = await UsageReader(redis).ledger(tenant)
    assert len(ledger) == 3 and {e.status for e in ledger} == {"failed"}


async def test_slot_released_when_worker_is_killed_mid_job(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    proc = stack.process("worker", "--model", model, "--echo-delay", "0.1")
    api = await _keyed(stack, model)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=15)
    tenant, key = await _tenant(redis, max_concurrent=2)
    body = _chat(model, " ".join(f"w{i}" for i in range(100)), stream=True)
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST",
            f"{api.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        ) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    assert await Quota(redis).inflight(tenant) == 1
                    proc.kill()
    await wait_for(lambda: _inflight(redis, tenant, 0), timeout=5)


async def test_redis_down_fails_closed_then_recovers(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    own = EmbeddedRedis(tmp_path / "own-redis")
    port = own.port
    stack.redis_url = own.url
    model = unique("m")
    await stack.worker(model=[model])
    api = await _keyed(stack, model)
    client_redis = connect(own.url)
    _t, key = await _tenant(client_redis)
    await client_redis.aclose()
    headers = {"authorization": f"Bearer {key}"}
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(url, json=_chat(model), headers=headers)).status_code == 200
        # Keep the data: restart with the same dir after a snapshot.
        snap = connect(own.url)
        await snap.save()
        await snap.aclose()
        own.stop()
        down = await client.post(url, json=_chat(model), headers=headers)
        assert down.status_code == 503
        assert down.json()["error"]["code"] in ("tenant_store_down", "quota_store_down")
        revived = EmbeddedRedis(tmp_path / "own-redis", port=port)
        try:
            await wait_for(lambda: _ok(client, url, model, headers), timeout=30, interval=0.2)
        finally:
            await api.stop()  # while its Redis is up: a stop against a dead one waits out timeouts
            revived.stop()


async def _ok(client: httpx.AsyncClient, url: str, model: str, headers: dict[str, str]) -> bool:
    return (await client.post(url, json=_chat(model), headers=headers)).status_code == 200


async def test_admin_api_tenants_keys_usage_prices(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    await stack.worker(model=[model])
    api = await _keyed(stack, model)
    admin = {"authorization": f"Bearer {ADMIN}"}
    name = unique("t")
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.get("/admin/tenants")).status_code == 401
        assert (
            await client.get("/admin/tenants", headers={"authorization": "Bearer nope"})
        ).status_code == 401
        created = await client.post(
            "/admin/tenants", json={"name": name, "rpm": 100, "models": [model]}, headers=admin
        )
        assert created.status_code == 201 and created.json()["rpm"] == 100
        dup = await client.post("/admin/tenants", json={"name": name}, headers=admin)
        assert dup.status_code == 409
        bad = await client.post("/admin/tenants", json={"name": "bad name!"}, headers=admin)
        assert bad.status_code == 400 and "error" in bad.json()
        key = (
            await client.post(f"/admin/tenants/{name}/keys", json={"label": "ci"}, headers=admin)
        ).json()
        assert key["key"].startswith("sk-llmq-") and key["label"] == "ci"
        listed = (await client.get(f"/admin/tenants/{name}/keys", headers=admin)).json()["data"]
        assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
        assert (
            await client.put(
                f"/admin/prices/{model}",
                json={"input_per_1m": 1000, "output_per_1m": 2000},
                headers=admin,
            )
        ).status_code == 200
        user = {"authorization": f"Bearer {key['key']}"}
        ok = await client.post(
            "/v1/chat/completions", json=_chat(model, "one two three"), headers=user
        )
        assert ok.status_code == 200
        other = await client.post(
            "/v1/chat/completions", json=_chat("not-allowed-model"), headers=user
        )
        assert other.status_code == 404
        await wait_for(lambda: _inflight(redis, name, 0))
        usage = (await client.get(f"/admin/tenants/{name}/usage?days=1", headers=admin)).json()[
            "data"
        ]
        assert usage[0]["model"] == model and usage[0]["requests"] == 1
        assert usage[0]["prompt_tokens"] == 3 and usage[0]["completion_tokens"] == 3
        assert usage[0]["cost_usd"] == pytest.approx((3 * 1000 + 3 * 2000) / 1e6)
        ledger = (await client.get(f"/admin/ledger?tenant={name}", headers=admin)).json()["data"]
        assert ledger[0]["job_id"] == ok.headers["x-request-id"]
        suspended = await client.post(f"/admin/tenants/{name}/suspend", headers=admin)
        assert suspended.json()["status"] == "suspended"
        refused = await client.post("/v1/chat/completions", json=_chat(model), headers=user)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "suspended"
        assert (await client.delete(f"/admin/tenants/{name}", headers=admin)).status_code == 200
        assert (await client.get(f"/admin/tenants/{name}", headers=admin)).status_code == 404


def test_cli_tenants_keys_usage(redis_server, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The `llmq tenants | keys | usage` commands, run in this process (`llmq` as a child
    process is covered by tests/cli): each import of llmq costs seconds of CPU."""
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_server.url)
    name = unique("t")

    def llmq(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--json"])  # the records, as scripts read them
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = llmq(
        "tenants", "create", name, "--rpm", "60", "--daily-tokens", "1000", "--models", "echo,gpt"
    )
    assert code == 0, err
    assert json.loads(out)["models"] == ["echo", "gpt"]
    key = json.loads(llmq("keys", "create", name)[1])
    assert key["key"].startswith("sk-llmq-")
    listed = json.loads(llmq("keys", "list", name)[1])
    assert listed[0]["id"] == key["id"] and key["key"] not in json.dumps(listed)
    assert json.loads(llmq("tenants", "update", name, "--rpm", "5")[1])["rpm"] == 5
    assert json.loads(llmq("tenants", "suspend", name)[1])["status"] == "suspended"
    assert json.loads(llmq("usage", name, "--days", "3")[1]) == []
    assert llmq("keys", "revoke", name, key["id"])[0] == 0
    code, _, err = llmq("tenants", "show", "no-such-tenant")
    assert code == 1 and "does not exist" in err
    assert llmq("tenants", "delete", name)[0] == 0
