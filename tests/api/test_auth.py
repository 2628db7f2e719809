"""Who is calling, the OpenAI way: 401 for no key or a key that does not resolve (the SDK's
`AuthenticationError`), 403 for a valid key that may not do this (a model its tenant may not
use, a suspended tenant), and a key lookup that always ends for every request sharing it."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import openai
import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Tenant, TenantStore
from llmq.api.tenancy.store import hash_key
from llmq.schemas import names
from tests.spec import assert_valid
from tests.stack import unique, wait_for


def _chat(model: str, text: str = "hi") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def _tenant(redis: Redis, **fields: object) -> tuple[str, str]:
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, **fields))  # type: ignore[arg-type]
    key, _ = await store.create_key(name)
    return name, key


async def _keyed(stack, model: str, **overrides: object):  # type: ignore[no-untyped-def]
    await stack.worker(model=[model])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, **overrides)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    return api


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert_valid("ErrorResponse", body)
    error: dict[str, object] = body["error"]
    return error


async def test_no_key_and_a_wrong_key_are_401(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await _keyed(stack, model)
    url = f"{api.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.post(url, json=_chat(model))
        assert missing.status_code == 401
        assert _error(missing)["code"] == "missing_api_key"
        assert _error(missing)["type"] == "invalid_request_error"
        for wrong in ("sk-llmq-wrong", "not-even-ours", "sk-llmq-" + "x" * 300):
            resp = await client.post(
                url, json=_chat(model), headers={"authorization": f"Bearer {wrong}"}
            )
            assert resp.status_code == 401, wrong
            assert _error(resp)["code"] == "invalid_api_key"
            assert wrong not in resp.text  # the key is never echoed back
        basic = await client.post(url, json=_chat(model), headers={"authorization": "Basic x"})
        assert basic.status_code == 401 and _error(basic)["code"] == "missing_api_key"


async def test_sdk_raises_authentication_error_for_wrong_and_revoked_keys(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model = unique("m")
    api = await _keyed(stack, model)
    tenant, key = await _tenant(redis)
    wrong = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="sk-llmq-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await wrong.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    await wrong.close()

    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    reply = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "keyed"}]
    )
    assert reply.choices[0].message.content == "keyed"
    store = TenantStore(redis)
    (record,) = await store.list_keys(tenant)
    await store.revoke_key(tenant, record.id)
    with pytest.raises(openai.AuthenticationError) as revoked:
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert revoked.value.code == "invalid_api_key"
    # A deleted tenant's keys stop resolving as well.
    other, other_key = await _tenant(redis)
    await store.delete(other)
    gone = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await gone.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    await gone.close()
    await sdk.close()


async def test_model_not_allowed_and_suspended_are_403(stack, redis) -> None:  # type: ignore[no-untyped-def]
    model, forbidden = unique("m"), unique("m")
    await stack.worker(model=[forbidden])
    api = await _keyed(stack, model)
    await wait_for(lambda: api.runtime.registry.workers_for(forbidden))
    tenant, key = await _tenant(redis, models=[model])
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    ok = await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "a"}])
    assert ok.choices[0].message.content == "a"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await sdk.chat.completions.create(
            model=forbidden, messages=[{"role": "user", "content": "b"}]
        )
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    body = denied.value.body
    assert isinstance(body, dict) and body["type"] == "permission_error"

    await TenantStore(redis).suspend(tenant)
    async with httpx.AsyncClient(timeout=10) as client:
        headers = {"authorization": f"Bearer {key}"}
        for call in (
            client.post(f"{api.url}/v1/chat/completions", json=_chat(model), headers=headers),
            client.get(f"{api.url}/v1/models", headers=headers),
            client.get(f"{api.url}/v1/files", headers=headers),
        ):
            resp = await call
            assert resp.status_code == 403, resp.text
            assert _error(resp)["code"] == "suspended"
            assert _error(resp)["type"] == "permission_error"
    await TenantStore(redis).resume(tenant)
    again = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "c"}]
    )
    assert again.choices[0].message.content == "c"
    await sdk.close()


async def _corrupt_record(redis: Redis, tenant: str, _key: str) -> None:
    """A tenant record whose limit is not a number."""
    await redis.hset(names.tenant_key(tenant), "rpm", "lots")


async def _wrong_type(redis: Redis, _tenant: str, key: str) -> None:
    """The key's record is a hash where a string belongs: Redis answers WRONGTYPE."""
    digest = hash_key(key)
    await redis.delete(names.api_key_key(digest))
    await redis.hset(names.api_key_key(digest), "oops", "1")


@pytest.mark.parametrize("breakage", [_corrupt_record, _wrong_type])
async def test_a_failing_key_lookup_answers_every_waiter(  # type: ignore[no-untyped-def]
    stack, redis, caplog, breakage
) -> None:
    """Five concurrent requests share one lookup that fails with something other than
    "Redis is down": each gets a 503 in OpenAI's shape, none hangs, the key is not logged."""
    model = unique("m")
    api = await _keyed(stack, model)
    tenant, key = await _tenant(redis)
    await breakage(redis, tenant, key)
    headers = {"authorization": f"Bearer {key}"}
    url = f"{api.url}/v1/chat/completions"
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.wait_for(
            asyncio.gather(
                *[client.post(url, json=_chat(model), headers=headers) for _ in range(5)]
            ),
            timeout=20,
        )
    assert time.monotonic() - started < 15
    assert [r.status_code for r in resps] == [503] * 5, [r.text for r in resps]
    codes = {_error(r)["code"] for r in resps}
    assert codes == {"tenant_store_error"}
    assert any("key lookup failed" in r.getMessage() for r in caplog.records)
    assert all(key not in r.getMessage() for r in caplog.records)


async def test_a_lookup_that_never_answers_is_cut_at_its_deadline(stack, redis) -> None:  # type: ignore[no-untyped-def]
    """Redis accepts the connection but never replies: every waiter gets 503 in bounded time."""
    model = unique("m")
    await stack.worker(model=[model])

    silent_clients: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_clients.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    real_redis, stack.redis_url = stack.redis_url, f"redis://127.0.0.1:{port}/0"
    try:
        api = await stack.api(auth_mode="keys", key_cache_ttl=0, redis_timeout=2.0)
    finally:
        stack.redis_url = real_redis
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    headers = {"authorization": "Bearer sk-llmq-" + "a" * 43}
    url = f"{api.url}/v1/chat/completions"
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        resps = await asyncio.wait_for(
            asyncio.gather(
                *[client.post(url, json=_chat(model), headers=headers) for _ in range(5)]
            ),
            timeout=20,
        )
    assert time.monotonic() - started < 15
    assert [r.status_code for r in resps] == [503] * 5
    assert {_error(r)["code"] for r in resps} == {"tenant_store_down"}
    for writer in silent_clients:
        writer.close()
    server.close()
