"""The response cache end to end (docs/cache.md): openai SDK → api → JetStream → worker
(openai backend) → a fake upstream that counts its calls; real nats-server and Valkey.

Hits replayed in the shape asked for (stream or JSON, spec-valid, same content, tool calls,
usage and finish reason), tenants never sharing entries, Cache-Control and TTLs, identical
requests in flight joined on one upstream call (also when the first client leaves), the
booking of cached answers, and the purge of a deleted tenant's entries."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import KeySettings, Quota, Tenant, TenantStore, UsageReader, connect
from llmq.schemas import names
from tests.e2e.messages_support import Keyed, raw_stream
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    json_reply,
    openai_chat,
    openai_chunk,
    openai_completion,
    sse_data,
)
from tests.worker.test_metrics import value

ADMIN = "admin-secret"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def upstream():  # type: ignore[no-untyped-def]
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        yield server


def _calls(upstream: FakeUpstream, path: str = CHAT) -> int:
    return sum(1 for r in upstream.received if r.path == path)


async def _cached_stack(  # type: ignore[no-untyped-def]
    stack, upstream, tmp_path: Path, table: str = "", **overrides: Any
):
    """An api with tenants and a model table, a worker of the openai backend in front of
    `upstream`; the model caches for an hour unless `table` says otherwise."""
    model = unique("m")
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        table.format(model=model) or f'[models."{model}"]\ncache = {{ ttl = "1h" }}\n'
    )
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN, models_file=str(models_file),
        **overrides,
    )  # fmt: skip
    await stack.worker(
        model=[model], backend="openai", backend_url=f"{upstream.url}/v1", capacity=8
    )
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    return api, model


async def _tenant(redis, **key: Any) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    store = TenantStore(redis)
    name = unique("t")
    await store.create(Tenant(name=name, rpm=100_000))
    plaintext, _ = await store.create_key(name, settings=KeySettings(**key))
    return name, plaintext


def _client(api: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)


MESSAGES = [{"role": "user", "content": "say hello"}]


async def _stream(client: openai.AsyncOpenAI, model: str, **extra: Any) -> tuple[Any, list]:  # type: ignore[type-arg]
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0, stream=True, **extra
    )
    chunks = [chunk async for chunk in raw.parse()]
    return raw.headers, chunks


def _content(chunks: list[Any]) -> tuple[str, str | None, Any]:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = [c.usage.model_dump() for c in chunks if c.usage is not None]
    return text, (finish or [None])[-1], usage


async def test_a_stream_is_replayed_with_the_same_content_usage_and_finish(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["Hel", "lo", " there"], usage=(9, 3)))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    client = _client(api, key)
    options = {"stream_options": {"include_usage": True}}
    first_headers, first = await _stream(client, model, **options)
    assert first_headers["x-llmq-cache"] == "miss"
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    again_headers, again = await _stream(client, model, **options, user="someone-else")
    assert again_headers["x-llmq-cache"] == "hit"
    assert int(again_headers["x-llmq-cache-age"]) >= 0
    assert _calls(upstream) == 1
    assert _content(again) == _content(first) == ("Hello there", "stop", [_content(first)[2][0]])
    for chunk in again:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    # the same request as JSON: one body with that content, from the same entry
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0
    )
    assert raw.headers["x-llmq-cache"] == "hit"
    whole = raw.parse()
    assert whole.choices[0].message.content == "Hello there"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    ) == (9, 3)
    assert_valid("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    assert _calls(upstream) == 1
    await client.close()


async def test_tool_calls_are_replayed_whole_and_streamed(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    chunks = [
        openai_chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        openai_chunk({}, "tool_calls"),
    ]
    upstream.route(CHAT, Reply(chunks=sse_data(chunks), content_type="text/event-stream"))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    client = _client(api, key)
    first = await client.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    headers, streamed = await _stream(client, model)
    assert headers["x-llmq-cache"] == "hit" and _calls(upstream) == 1
    calls = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city":"Oslo"}'
    assert first.choices[0].message.tool_calls[0].function.arguments == '{"city":"Oslo"}'
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    for chunk in streamed:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    await client.close()


async def test_tenants_never_share_an_entry(stack, upstream, redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upstream.route(CHAT, openai_chat(["only for A"]))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    (_, key_a), (_, key_b) = await _tenant(redis), await _tenant(redis)
    a, b = _client(api, key_a), _client(api, key_b)
    await a.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    raw = await b.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0
    )
    assert raw.headers["x-llmq-cache"] == "miss"
    assert _calls(upstream) == 2
    raw = await a.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0
    )
    assert raw.headers["x-llmq-cache"] == "hit" and _calls(upstream) == 2
    await a.close()
    await b.close()


async def test_cache_control_and_ttls(stack, upstream, redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upstream.route(CHAT, openai_chat(["ok"]))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    url, auth = f"{api.url}{CHAT}", {"authorization": f"Bearer {key}"}
    body = {"model": model, "messages": MESSAGES, "temperature": 0}
    async with httpx.AsyncClient(timeout=30) as http:

        async def ask(headers: dict[str, str], expect: str, calls: int) -> None:
            resp = await http.post(url, json=body, headers={**auth, **headers})
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-llmq-cache"] == expect
            await wait_for(lambda: not api.app.state.cache.writes.busy)
            assert _calls(upstream) == calls

        await ask({"cache-control": "no-store"}, "miss", 1)  # not written
        await ask({}, "miss", 2)  # so this one misses, and is written
        await ask({}, "hit", 2)
        await ask({"cache-control": "no-cache"}, "miss", 3)  # looks nothing up
        await ask({}, "hit", 3)
        bad = await http.post(url, json=body, headers={**auth, "x-llmq-cache-ttl": "soon"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-llmq-cache-ttl"
        # a TTL of one second: expired after it
        body["messages"] = [{"role": "user", "content": "short-lived"}]
        await ask({"x-llmq-cache-ttl": "1"}, "miss", 4)
        await ask({}, "hit", 4)
        await asyncio.sleep(1.3)
        await ask({"cache-control": "no-store"}, "miss", 5)
        # sampled: a temperature without a seed is never cached by default
        body["temperature"] = 0.7
        await ask({}, "skip", 6)
        await ask({}, "skip", 7)
        body["seed"] = 7
        await ask({}, "miss", 8)
        await ask({}, "hit", 8)


async def test_a_key_with_a_cache_ttl_caches_a_model_that_does_not(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["ok"]))
    api, model = await _cached_stack(stack, upstream, tmp_path, table='[models."{model}"]\n')
    (_, plain), (_, caching) = await _tenant(redis), await _tenant(redis, cache_ttl=3600)
    for key, expect in ((plain, None), (plain, None), (caching, "miss"), (caching, "hit")):
        raw = await _client(api, key).chat.completions.with_raw_response.create(
            model=model, messages=MESSAGES, temperature=0
        )
        assert raw.headers.get("x-llmq-cache") == expect  # no opt-in: not even a header
        await wait_for(lambda: not api.app.state.cache.writes.busy)
    assert _calls(upstream) == 3


async def test_100_identical_requests_cost_one_upstream_call(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["slow", " answer"], gap=0.5))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    client = _client(api, key)

    async def one() -> tuple[str, str]:
        headers, chunks = await _stream(client, model)
        return headers["x-llmq-cache"], _content(chunks)[0]

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert {text for _, text in results} == {"slow answer"}
    assert _calls(upstream) == 1
    outcomes = [status for status, _ in results]
    assert outcomes.count("miss") == 1, outcomes
    assert set(outcomes) <= {"miss", "join", "hit"}
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{api.url}/metrics")).text
    joins = value(text, "llmq_api_cache_requests_total", model=model, outcome="join")
    assert joins == outcomes.count("join") > 0
    await client.close()


async def test_joined_requests_go_on_when_the_first_client_leaves(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["a", "b", "c", "d"], gap=0.4))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    url = f"{api.url}{CHAT}"
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": model, "messages": MESSAGES, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(timeout=30) as first, httpx.AsyncClient(timeout=30) as second:
        async with first.stream("POST", url, json=body, headers=headers) as leading:
            assert leading.headers["x-llmq-cache"] == "miss"
            lines = leading.aiter_lines()
            while not (await lines.__anext__()).startswith("data: "):
                pass
            joined = asyncio.create_task(second.post(url, json=body, headers=headers))
            await wait_for(lambda: any(f.joined for f in api.app.state.cache.flights.open.values()))
        # the first client is gone; the job goes on for the second
        resp = await joined
    assert resp.headers["x-llmq-cache"] == "join"
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    assert text == "abcd"
    assert _calls(upstream) == 1
    # and what it answered is stored
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    async with httpx.AsyncClient(timeout=30) as http:
        again = await http.post(url, json={**body, "stream": False}, headers=headers)
    assert again.headers["x-llmq-cache"] == "hit"
    assert again.json()["choices"][0]["message"]["content"] == "abcd"


async def test_cached_answers_are_booked_as_cached_and_take_no_slot(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["ok"], usage=(5, 1)))
    table = '[models."{model}"]\ncache = {{ ttl = "1h" }}\ncache_hit_price = 0.25\n'
    api, model = await _cached_stack(stack, upstream, tmp_path, table=table)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, rpm=100_000, max_concurrent=1))
    key, _ = await store.create_key(tenant)
    client = _client(api, key)
    await client.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    # the tenant's one concurrency slot held by a running job: a new job is refused, a hit
    # is still answered (it takes no slot)
    quota = Quota(redis)
    assert (await quota.reserve(tenant, model, 1, 1, "held-" + tenant)).allowed
    async with httpx.AsyncClient(timeout=30) as http:
        other = {"model": model, "temperature": 0,
                 "messages": [{"role": "user", "content": "another question"}]}  # fmt: skip
        refused = await http.post(
            f"{api.url}{CHAT}", json=other, headers={"authorization": f"Bearer {key}"}
        )
    assert refused.status_code == 429 and "max_concurrent" in refused.json()["error"]["message"]
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0
    )
    assert raw.headers["x-llmq-cache"] == "hit"
    reader = UsageReader(redis)

    async def booked() -> bool:
        return any(e.cached for e in await reader.ledger(tenant))

    await wait_for(booked)
    entries = await reader.ledger(tenant)
    hit = next(e for e in entries if e.cached)
    assert (hit.cache, hit.cost_usd, hit.prompt_tokens, hit.completion_tokens) == (
        "hit",
        0.25,
        5,
        1,
    )
    assert not any(e.cached for e in entries if e is not hit)
    rows = await reader.usage(tenant, days=1)
    assert rows[0].requests == 2 and rows[0].cache_hits == 1  # the miss and the hit
    await quota.release(tenant, model, "held-" + tenant, 0, 0, failed=True)
    await client.close()


async def test_deleting_a_tenant_purges_its_entries(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["ok"]))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    tenant, key = await _tenant(redis)
    await _client(api, key).chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    scope = await TenantStore(redis).scope(tenant)
    pattern = names.cache_scope_pattern(scope)
    assert [k async for k in redis.scan_iter(match=pattern)]
    async with httpx.AsyncClient(timeout=60) as http:  # httpx's 5 s: short on a busy machine
        resp = await http.delete(
            f"{api.url}/admin/tenants/{tenant}", headers={"authorization": f"Bearer {ADMIN}"}
        )
    assert resp.status_code == 200 and resp.json()["purged"]["cache_keys"] == 3
    assert [k async for k in redis.scan_iter(match=pattern)] == []


async def test_hostile_inputs_are_bounded_without_a_5xx(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["x" * 5000]))
    api, model = await _cached_stack(
        stack, upstream, tmp_path, cache_max_entry_bytes=4000, cache_tenant_max_entries=20
    )
    tenant, key = await _tenant(redis)
    url, auth = f"{api.url}{CHAT}", {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        huge = (
            b'{"model":"'
            + model.encode()
            + b'","temperature":0,"messages":[{"role":"user","content":"'
        )
        huge += b"a" * 100_000_000 + b'"}]}'
        resp = await http.post(
            url, content=huge, headers={**auth, "content-type": "application/json"}
        )
        assert resp.status_code == 413, resp.text[:200]
        assert _calls(upstream) == 0
        # an answer above cache_max_entry_bytes is served, never stored
        body = {"model": model, "messages": MESSAGES, "temperature": 0}
        for expect in ("miss", "miss"):
            resp = await http.post(url, json=body, headers=auth)
            assert resp.status_code == 200 and resp.headers["x-llmq-cache"] == expect
            await wait_for(lambda: not api.app.state.cache.writes.busy)
        # many distinct keys: the tenant keeps at most cache_tenant_max_entries
        upstream.route(CHAT, openai_chat(["y"]))

        async def distinct(i: int) -> int:
            message = [{"role": "user", "content": f"question {i}"}]
            r = await http.post(url, json={**body, "messages": message}, headers=auth)
            return r.status_code

        statuses = await asyncio.gather(*(distinct(i) for i in range(200)))
    assert set(statuses) == {200}
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    scope = await TenantStore(redis).scope(tenant)
    assert await redis.zcard(names.cache_index_key(scope)) <= 20
    entries = [k async for k in redis.scan_iter(match=names.cache_scope_pattern(scope))]
    assert len(entries) <= 20 + 2
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{api.url}/metrics")).text
    assert value(text, "llmq_api_cache_requests_total", model=model, outcome="miss") == 202
    assert value(text, "llmq_api_cache_evictions_total", model=model) >= 200 - 20
    assert value(text, "llmq_api_cache_stored_bytes_total", model=model) > 200 * 50


async def test_completions_embeddings_and_responses_go_through_the_cache(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    upstream.route(CHAT, openai_chat(["fine", " thanks"]))
    upstream.route("/v1/completions", openai_completion(["once", " upon"]))
    vector = {"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}
    upstream.route("/v1/embeddings", json_reply(200, {
        "object": "list", "data": [vector], "model": "up",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }))  # fmt: skip
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    client = _client(api, key)
    settle = lambda: wait_for(lambda: not api.app.state.cache.writes.busy)  # noqa: E731
    for expect in ("miss", "hit"):
        raw = await client.completions.with_raw_response.create(
            model=model, prompt="tell a story", temperature=0
        )
        assert raw.headers["x-llmq-cache"] == expect
        assert raw.parse().choices[0].text == "once upon"
        assert_valid("CreateCompletionResponse", json.loads(raw.http_response.content))
        await settle()
        raw = await client.embeddings.with_raw_response.create(
            model=model, input="hello", encoding_format="float"
        )
        assert raw.headers["x-llmq-cache"] == expect
        assert raw.parse().data[0].embedding == [0.25, -0.5]
        assert_valid("CreateEmbeddingResponse", json.loads(raw.http_response.content))
        await settle()
    assert (_calls(upstream, "/v1/completions"), _calls(upstream, "/v1/embeddings")) == (1, 1)
    # Responses: cached only when not stored; a stream is replayed as the same events
    seen: list[list[Any]] = []
    for expect in ("miss", "hit"):
        raw = await client.responses.with_raw_response.create(
            model=model, input="how are you", temperature=0, store=False, stream=True
        )
        assert raw.headers["x-llmq-cache"] == expect
        events = [event async for event in raw.parse()]
        seen.append(
            [e.model_dump(exclude={"response", "item_id", "sequence_number"}) for e in events]
        )
        for event in events:
            assert_valid("ResponseStreamEvent", event.model_dump(exclude_unset=True))
        await settle()
    assert seen[0] == seen[1]
    whole = await client.responses.with_raw_response.create(
        model=model, input="how are you", temperature=0, store=False
    )
    assert whole.headers["x-llmq-cache"] == "hit"
    assert whole.parse().output_text == "fine thanks"
    stored = await client.responses.with_raw_response.create(
        model=model, input="how are you", temperature=0
    )
    assert stored.headers["x-llmq-cache"] == "skip"  # stored responses are never cached
    assert _calls(upstream) == 2
    await client.close()


async def test_the_messages_api_goes_through_the_cache(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    """Anthropic's Messages API on an openai worker: a stream replayed as the same named
    events (each valid for the anthropic SDK), a whole answer as the same body."""
    upstream.route(CHAT, openai_chat(["Bonjour", " !"]))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    tenant, key = await _tenant(redis)
    keyed = Keyed(api, key, tenant, "")
    body = {"model": model, "max_tokens": 50, "temperature": 0,
            "messages": [{"role": "user", "content": "salut"}]}  # fmt: skip
    seen = []
    for expect in ("miss", "hit"):
        resp, events = await raw_stream(keyed, body)
        assert resp.headers["x-llmq-cache"] == expect
        seen.append([{k: v for k, v in e.items() if k != "message"} for e in events])
        await wait_for(lambda: not api.app.state.cache.writes.busy)
    assert seen[0] == seen[1] and _calls(upstream) == 1
    client = keyed.client()
    for expect in ("miss", "hit"):  # a whole answer is its own entry
        raw = await client.messages.with_raw_response.create(
            model=model,
            max_tokens=50,
            messages=body["messages"],  # type: ignore[arg-type]
            extra_body={"temperature": 0},  # this SDK has no `temperature` of its own
        )
        assert raw.headers["x-llmq-cache"] == expect
        message = await raw.parse()
        assert message.content[0].text == "Bonjour !"  # type: ignore[union-attr]
        await wait_for(lambda: not api.app.state.cache.writes.busy)
    assert _calls(upstream) == 2
    await client.close()


async def test_rpm_applies_to_hits(stack, upstream, redis, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upstream.route(CHAT, openai_chat(["ok"]))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, rpm=2))
    key, _ = await store.create_key(tenant)
    url, auth = f"{api.url}{CHAT}", {"authorization": f"Bearer {key}"}
    body = {"model": model, "messages": MESSAGES, "temperature": 0}
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(url, json=body, headers=auth)
        await wait_for(lambda: not api.app.state.cache.writes.busy)
        hit = await http.post(url, json=body, headers=auth)
        refused = await http.post(url, json=body, headers=auth)
    assert (first.headers["x-llmq-cache"], hit.headers["x-llmq-cache"]) == ("miss", "hit")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in refused.headers
    assert _calls(upstream) == 1


async def test_hits_and_joins_name_the_omitted_tools(  # type: ignore[no-untyped-def]
    stack, upstream, redis, tmp_path
) -> None:
    """The built-in tools the model table omits are named (`x-llmq-omitted`) on a hit and a
    join as on the answer that ran."""
    upstream.route(CHAT, openai_chat(["no", " search", " here"], gap=0.4))
    api, model = await _cached_stack(stack, upstream, tmp_path)
    _, key = await _tenant(redis)
    url = f"{api.url}/v1/responses"
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": model, "input": "news?", "temperature": 0, "store": False,
            "stream": True, "tools": [{"type": "web_search"}]}  # fmt: skip
    omitted = "tools[0]=web_search"
    async with httpx.AsyncClient(timeout=30) as first, httpx.AsyncClient(timeout=30) as second:
        async with first.stream("POST", url, json=body, headers=headers) as leading:
            assert leading.headers["x-llmq-cache"] == "miss"
            assert leading.headers["x-llmq-omitted"] == omitted
            joined = asyncio.create_task(second.post(url, json=body, headers=headers))
            await wait_for(lambda: any(f.joined for f in api.app.state.cache.flights.open.values()))
            await leading.aread()
        resp = await joined
    assert (resp.headers["x-llmq-cache"], resp.headers["x-llmq-omitted"]) == ("join", omitted)
    await wait_for(lambda: not api.app.state.cache.writes.busy)
    async with httpx.AsyncClient(timeout=30) as http:
        for stream in (True, False):
            again = await http.post(url, json={**body, "stream": stream}, headers=headers)
            assert again.status_code == 200, again.text
            assert (again.headers["x-llmq-cache"], again.headers["x-llmq-omitted"]) == (
                "hit",
                omitted,
            )
    assert _calls(upstream) == 1
