"""Every error class of `/v1/messages` as Anthropic's SDK sees it — 400, 401, 403, 404, 413,
429 with `retry-after`, 500, 529 — each body Anthropic's shape (checked with the SDK's type,
strict) with a `request-id` header; and the hostile inputs of this route (wrong types, no
`max_tokens`, a huge one, invalid UTF-8, deep nesting) answered 4xx, never 5xx, using no
quota: every Redis key of the tenant unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis as sync_redis

from llmq.api.tenancy import Tenant
from llmq.schemas import names
from tests.e2e.messages_support import Keyed, keyed_api, serving
from tests.lazy import lazy
from tests.spec.anthropic import assert_error
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import FakeUpstream, openai_chat, openai_error

anthropic = lazy("anthropic")  # 2 s to import: only where a test uses it

USER = [{"role": "user", "content": "hi"}]


def _check(error: anthropic.APIStatusError, kind: str) -> None:
    body = error.body
    assert isinstance(body, dict)
    parsed = assert_error(body)
    assert parsed.error.type == kind, body
    assert error.response.headers["request-id"] == parsed.request_id


async def test_every_error_class(stack, redis_server, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    model, other, gone = unique("gpt"), unique("other"), unique("gone")
    tenant = Tenant(name=unique("t"), rpm=1000, models=[model, gone])
    keyed = await keyed_api(stack, redis_server.url, tenant, max_body_bytes=50_000)
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1",
                       breaker_threshold=100, max_deliver=2)  # fmt: skip
    await stack.worker(model=[other])
    departed = await stack.worker(model=[gone])
    for name in (model, other, gone):
        await serving(keyed, name)
    await departed.close()
    stack.workers.remove(departed)
    await wait_for(lambda: not keyed.api.runtime.registry.workers_for(gone))
    client = keyed.client()
    cases: list[tuple[type[anthropic.APIStatusError], str, Any]] = [
        (anthropic.BadRequestError, "invalid_request_error",
         client.messages.create(model=model, messages=USER, max_tokens=0)),
        (anthropic.AuthenticationError, "authentication_error",
         keyed.client(api_key="sk-llmq-" + "0" * 40).messages.create(
             model=model, messages=USER, max_tokens=5)),
        (anthropic.PermissionDeniedError, "permission_error",
         client.messages.create(model=other, messages=USER, max_tokens=5)),
        (anthropic.NotFoundError, "not_found_error",
         client.messages.create(model="no-such-model", messages=USER, max_tokens=5)),
        (anthropic.ContentTooLargeError, "invalid_request_error",
         client.messages.create(model=model, max_tokens=5,
                                messages=[{"role": "user", "content": "x" * 60_000}])),
        (anthropic.OverloadedError, "overloaded_error",
         client.messages.create(model=gone, messages=USER, max_tokens=5)),
    ]  # fmt: skip
    for error_class, kind, call in cases:
        with pytest.raises(error_class) as caught:
            await call
        _check(caught.value, kind)
    upstream.route("/v1/chat/completions", openai_error(500, "boom", "server_error"))
    with pytest.raises(anthropic.InternalServerError) as failed:
        await client.messages.create(model=model, messages=USER, max_tokens=5)
    assert failed.value.status_code == 500
    _check(failed.value, "api_error")
    async with httpx.AsyncClient(timeout=30) as raw:
        missing = await raw.post(f"{keyed.url}/v1/messages", json={"model": model,
                                 "messages": USER, "max_tokens": 5})  # fmt: skip
    assert missing.status_code == 401
    assert assert_error(missing.json()).error.type == "authentication_error"
    await client.close()


async def test_rate_limit_and_bearer_auth(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("echo")
    keyed = await keyed_api(stack, redis_server.url, Tenant(name=unique("t"), rpm=1))
    await stack.worker(model=[model])
    await serving(keyed, model)
    # `Authorization: Bearer` works as well as `x-api-key`
    async with anthropic.AsyncAnthropic(base_url=keyed.url, auth_token=keyed.key,
                                        max_retries=0) as bearer:  # fmt: skip
        first = await bearer.messages.create(model=model, messages=USER, max_tokens=5)
    assert first.content[0].text == "hi"  # type: ignore[union-attr]
    async with keyed.client() as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=model, messages=USER, max_tokens=5)
    _check(limited.value, "rate_limit_error")
    assert int(limited.value.response.headers["retry-after"]) >= 1


DEEP = b"[" * 200_000 + b"]" * 200_000


def hostile(model: str) -> list[tuple[str, bytes]]:
    def body(text: str) -> bytes:
        return text.replace("MODEL", model).encode()

    return [
        ("no max_tokens", body('{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}')),
        ("max_tokens a string", body('{"model":"MODEL","max_tokens":"10","messages":[]}')),
        ("max_tokens huge", body('{"model":"MODEL","max_tokens":1' + "0" * 40
                                 + ',"messages":[{"role":"user","content":"hi"}]}')),
        ("max_tokens above the ceiling", body('{"model":"MODEL","max_tokens":100000000,'
                                              '"messages":[{"role":"user","content":"hi"}]}')),
        ("max_tokens negative", body('{"model":"MODEL","max_tokens":-5,'
                                     '"messages":[{"role":"user","content":"hi"}]}')),
        ("messages a string", body('{"model":"MODEL","max_tokens":5,"messages":"hi"}')),
        ("no messages", body('{"model":"MODEL","max_tokens":5,"messages":[]}')),
        ("a system role", body('{"model":"MODEL","max_tokens":5,'
                               '"messages":[{"role":"system","content":"hi"}]}')),
        ("content a number", body('{"model":"MODEL","max_tokens":5,'
                                  '"messages":[{"role":"user","content":5}]}')),
        ("text block without text", body('{"model":"MODEL","max_tokens":5,"messages":'
                                         '[{"role":"user","content":[{"type":"text"}]}]}')),
        ("tool_use input a string", body(
            '{"model":"MODEL","max_tokens":5,"messages":[{"role":"assistant","content":'
            '[{"type":"tool_use","id":"t","name":"f","input":"x"}]}]}')),
        ("block without type", body('{"model":"MODEL","max_tokens":5,"messages":'
                                    '[{"role":"user","content":[{"text":"x"}]}]}')),
        ("stream a string", body('{"model":"MODEL","max_tokens":5,"stream":"yes",'
                                 '"messages":[{"role":"user","content":"hi"}]}')),
        ("temperature a string", body('{"model":"MODEL","max_tokens":5,"temperature":"hot",'
                                      '"messages":[{"role":"user","content":"hi"}]}')),
        ("unknown tool_choice", body('{"model":"MODEL","max_tokens":5,"tool_choice":'
                                     '{"type":"maybe"},"messages":[{"role":"user","content":"hi"}]}')),
        ("invalid UTF-8", b'{"model":"' + model.encode() + b'","max_tokens":5,"messages":'
                          b'[{"role":"user","content":"\xff\xfe"}]}'),
        ("deep nesting", b'{"model":"' + model.encode() + b'","max_tokens":5,"messages":'
                         b'[{"role":"user","content":[{"type":"text","text":"x","n":' + DEEP
                         + b'}]}]}'),
        ("not JSON", b"max_tokens=5"),
        ("empty", b""),
        ("an array", b"[1,2]"),
    ]  # fmt: skip


def _snapshot(client: sync_redis.Redis, tenant: str) -> dict[bytes, bytes]:
    """Every Redis key of the tenant (quota counters, usage, ledger), serialized."""
    keys = sorted(client.scan_iter(match=f"*{names.tenant_tag(tenant)}*", count=100_000))
    return {key: client.dump(key) for key in keys}  # type: ignore[misc]


async def test_hostile_inputs_are_4xx_and_use_no_quota(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("echo")
    tenant = Tenant(name=unique("t"), rpm=1000, tpm=1_000_000, max_concurrent=10)
    keyed: Keyed = await keyed_api(stack, redis_server.url, tenant)
    await stack.worker(model=[model])
    await serving(keyed, model)
    direct = sync_redis.Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as client:
        headers = {"x-api-key": keyed.key, "content-type": "application/json"}
        plain = {"model": model, "max_tokens": 5, "messages": USER}
        ok = await client.post(f"{keyed.url}/v1/messages", headers=headers, json=plain)
        assert ok.status_code == 200
        await keyed.booked(ok.headers["request-id"])  # counters exist and have settled
        await wait_for(lambda: direct.zcard(names.inflight_key(keyed.tenant)) == 0)
        before = _snapshot(direct, keyed.tenant)
        assert any(b":rate" in key for key in before), sorted(before)
        for name, body in hostile(model):
            resp = await client.post(f"{keyed.url}/v1/messages", headers=headers, content=body)
            assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
            assert assert_error(resp.json()).error.type == "invalid_request_error", name
            assert resp.headers["request-id"], name
            count = await client.post(f"{keyed.url}/v1/messages/count_tokens", headers=headers,
                                      content=body)  # fmt: skip
            assert count.status_code < 500, (name, count.status_code)  # it checks its own fields
    assert _snapshot(direct, keyed.tenant) == before, "a refused request changed the tenant's keys"
    direct.close()


async def test_upstream_answer_after_refusals(stack, redis_server, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    """A refused field of a chat backend is named (400) and the next request is served."""
    model = unique("gpt")
    keyed = await keyed_api(stack, redis_server.url)
    await stack.worker(model=[model], backend="openai", backend_url=f"{upstream.url}/v1")
    await serving(keyed, model)
    upstream.route("/v1/chat/completions", openai_chat(["fine"]))
    async with keyed.client() as client:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(
                model=model, max_tokens=5, messages=USER, extra_body={"service_tier": "auto"}
            )
        assert "service_tier" in str(refused.value)
        answer = await client.messages.create(model=model, max_tokens=5, messages=USER)
    assert answer.content[0].text == "fine"  # type: ignore[union-attr]
