"""Fallbacks in the model table (issue 16, point 1), end to end with the `openai` SDK: a
request moves to the next model when its model answers 5xx or 429 before a first token,
has no live worker, or only workers whose circuit is open; a stream never switches after
its first token; the response and `x-llmq-model` name the model that served it; metrics
count each move by cause; the table reloads live. Real nats-server, Valkey, fake upstreams
over HTTP and echo workers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    json_reply,
    openai_chunk,
    openai_error,
    sse_data,
)

CHAT = "/v1/chat/completions"
QUICK = {"breaker_threshold": 100}


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 1))


def _table(primary: str, *fallbacks: str, extra: str = "") -> str:
    names = ", ".join(f'"{f}"' for f in fallbacks)
    return f'[models."{primary}"]\nfallbacks = [{names}]\n{extra}'


async def _openai_worker(stack: Any, api: Any, model: str, url: str, **extra: Any) -> Any:
    values: dict[str, Any] = {"model": [model], "backend": "openai", "backend_url": url}
    worker = await stack.worker(**{**values, **extra})
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    return worker


async def _echo_worker(stack: Any, api: Any, model: str) -> Any:
    worker = await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    return worker


def _client(api: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def _fallback_count(api: Any, cause: str, origin: str, to: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{api.url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("llmq_api_fallbacks_total{") and f'cause="{cause}"' in line:
            if f'model="{origin}"' in line and f'to="{to}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _served_by(api: Any, model: str, stream: bool = False) -> tuple[str, str, str]:
    """(response model, x-llmq-model header, text) of one request through the SDK."""
    client = _client(api)
    messages: Any = [{"role": "user", "content": "hello there"}]
    try:
        if stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, stream=True
            )
            header = raw.headers["x-llmq-model"]
            chunks = [c async for c in raw.parse()]
            for c in chunks:
                assert_valid("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
            text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
            return chunks[0].model, header, text
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages)
        done = raw.parse()
        assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
        return done.model, raw.headers["x-llmq-model"], done.choices[0].message.content or ""
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (openai_error(503, "overloaded", "server_error"), "upstream_error"),
        (openai_error(429, "slow down", "requests", "rate_limit_exceeded",
                      headers={"retry-after": "1"}), "rate_limited"),
    ],
)  # fmt: skip
async def test_a_failing_model_falls_back_streamed_or_not(
    upstream: FakeUpstream, stack: Any, tmp_path: Path, failure: Reply, cause: str
) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    upstream.route(CHAT, failure)
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    await _echo_worker(stack, api, spare)
    assert await _served_by(api, primary) == (spare, spare, "hello there")
    assert await _served_by(api, primary, stream=True) == (spare, spare, "hello there")
    assert len(upstream.received) >= 2  # the primary was tried each time
    assert await _fallback_count(api, cause, primary, spare) == 2


async def test_no_live_worker_then_circuit_open_fall_back(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    await _echo_worker(stack, api, spare)
    # a model known to the catalog whose only worker has gone
    gone = await _echo_worker(stack, api, primary)
    await gone.close()
    await wait_for(lambda: not api.runtime.registry.workers_for(primary))
    assert await _served_by(api, primary) == (spare, spare, "hello there")
    assert await _fallback_count(api, "no_worker", primary, spare) == 1

    # a worker whose circuit opens after its upstream fails
    upstream.route(CHAT, openai_error(500, "down", "server_error"))
    upstream.route("/v1/models", openai_error(503, "down", "server_error"))
    sick = await _openai_worker(
        stack, api, primary, f"{upstream.url}/v1", breaker_threshold=1, breaker_probe_interval=5
    )
    assert await _served_by(api, primary) == (spare, spare, "hello there")
    await wait_for(lambda: sick.breaker.state == "open", timeout=5)
    await wait_for(
        lambda: any(w.id == sick.id and w.circuit == "open"
                    for w in api.runtime.registry.live_workers()),
        timeout=5,
    )  # fmt: skip
    tried = len(upstream.received)
    assert await _served_by(api, primary, stream=True) == (spare, spare, "hello there")
    assert len([r for r in upstream.received[tried:] if r.path == CHAT]) == 0
    # the request that opened the circuit waited in the queue of a model nobody took any
    # more: it moved on too
    assert await _fallback_count(api, "circuit_open", primary, spare) == 2


async def test_a_stream_never_switches_after_its_first_token(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    chunks = sse_data(
        [openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": "par"}),
         openai_chunk({"content": "tial"})],
        done=False,
    )  # fmt: skip
    upstream.route(CHAT, Reply(chunks=chunks, content_type="text/event-stream", drop_after=2))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    spare_worker = await _echo_worker(stack, api, spare)
    events: list[str] = []
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("POST", f"{api.url}{CHAT}", json={
            "model": primary, "stream": True, "messages": [{"role": "user", "content": "x"}],
        }) as resp,
    ):  # fmt: skip
        assert resp.status_code == 200
        assert resp.headers["x-llmq-model"] == primary
        events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])
    assert spare_worker.outcomes == {}  # never sent to the fallback
    assert await _fallback_count(api, "upstream_error", primary, spare) == 0


async def test_a_request_error_does_not_fall_back_and_the_last_failure_is_reported(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    upstream.route(CHAT, openai_error(400, "bad temperature", "invalid_request_error"))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    spare_worker = await _echo_worker(stack, api, spare)
    client = _client(api)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=primary, messages=[{"role": "user", "content": "x"}]
        )
    assert "bad temperature" in str(caught.value)
    assert spare_worker.outcomes == {}
    # every model of the chain failing: the client hears the last one's failure
    upstream.route(CHAT, openai_error(503, "overloaded", "server_error"))
    await spare_worker.close()
    await wait_for(lambda: not api.runtime.registry.workers_for(spare))
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(
            model=primary, messages=[{"role": "user", "content": "x"}]
        )
    assert failed.value.status_code == 502  # the primary's failure: the spare had no worker
    await client.close()


async def test_fallbacks_reload_live(upstream: FakeUpstream, stack: Any, tmp_path: Path) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    upstream.route(CHAT, openai_error(500, "down", "server_error"))
    upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
    table = tmp_path / "models.toml"
    _write(table, f'[models."{primary}"]\nmax_tokens = 100\n')
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    await _echo_worker(stack, api, spare)
    body = {"model": primary, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(f"{api.url}{CHAT}", json=body)).status_code == 502
        _write(table, _table(primary, spare, extra="max_tokens = 100\n"))

        async def falls_back() -> bool:
            resp = await http.post(f"{api.url}{CHAT}", json=body)
            return resp.status_code == 200 and resp.headers["x-llmq-model"] == spare

        await wait_for(falls_back, timeout=5)


async def test_a_fallback_the_tenant_may_not_use_is_skipped_and_quota_stays_exact(
    upstream: FakeUpstream, stack: Any, tmp_path: Path, redis_server: Any
) -> None:
    from llmq.api.tenancy import Tenant, TenantStore, connect
    from llmq.api.tenancy.periods import periods
    from llmq.schemas import names

    primary, barred, spare = unique("fb-main"), unique("fb-barred"), unique("fb-spare")
    upstream.route(CHAT, openai_error(503, "overloaded", "server_error"))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, barred, spare))
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, models=[primary, spare]))
    key, _ = await store.create_key(tenant)
    api = await stack.api(models_file=str(table), auth_mode="keys", key_cache_ttl=0)
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    barred_worker = await _echo_worker(stack, api, barred)
    await _echo_worker(stack, api, spare)
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=primary, messages=[{"role": "user", "content": "one two"}]
    )
    assert raw.headers["x-llmq-model"] == spare
    assert barred_worker.outcomes == {}  # never sent where the tenant may not go
    await client.close()

    usage = names.usage_key(tenant, periods(time.time()).day)

    async def booked() -> bool:  # each attempt booked on its own model, every slot freed
        hits = await redis.hgetall(usage)
        return hits.get(f"req:{spare}") == "1" and not await redis.zcard(names.inflight_key(tenant))

    await wait_for(booked, timeout=5)
    hits = await redis.hgetall(usage)
    assert hits[f"fail:{primary}"] == "1"  # the failed attempt, booked on its own model
    assert f"req:{barred}" not in hits
    await redis.aclose()


async def test_attempts_exhausted_falls_back(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    """The primary's worker fails every attempt and hands the job back each time, until
    JetStream's attempt budget (`max_deliver`) is used up; then the fallback serves."""
    primary, spare = unique("fb-main"), unique("fb-spare")
    upstream.route(CHAT, openai_error(503, "overloaded", "server_error"))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    worker = await _openai_worker(stack, api, primary, f"{upstream.url}/v1", max_deliver=2, **QUICK)
    # As a worker configured for more attempts than the queue allows (say mid rolling
    # upgrade) does: it gives every failed attempt back to the queue instead of answering.
    worker.runner.max_deliver = 100
    await _echo_worker(stack, api, spare)
    assert await _served_by(api, primary) == (spare, spare, "hello there")
    assert worker.outcomes == {"retried": 2}  # both deliveries of the job failed
    assert await _fallback_count(api, "attempts_exhausted", primary, spare) == 1
    assert await _served_by(api, primary, stream=True) == (spare, spare, "hello there")
    assert await _fallback_count(api, "attempts_exhausted", primary, spare) == 2


async def _response_served_by(api: Any, model: str, stream: bool = False) -> tuple[str, str, str]:
    """(x-llmq-model header, text, response id) of one Responses request through the SDK;
    every body and event validated against the spec, the response stored and readable."""
    client = _client(api)
    try:
        if stream:
            raw = await client.responses.with_raw_response.create(
                model=model, input="hello there", stream=True
            )
            events = [e async for e in raw.parse()]
            for e in events:
                assert_valid("ResponseStreamEvent", e.model_dump(mode="json", exclude_unset=True))
            assert events[-1].type == "response.completed"
            final = events[-1].response
        else:
            raw = await client.responses.with_raw_response.create(model=model, input="hello there")
            assert_valid("Response", json.loads(raw.content))
            final = raw.parse()
        assert (await client.responses.retrieve(final.id)).output_text == final.output_text
        return raw.headers["x-llmq-model"], final.output_text, final.id
    finally:
        await client.close()


async def test_the_responses_api_falls_back_too(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    """The same causes and the same `x-llmq-model` on `/v1/responses`, streamed or not."""
    primary, spare, gone = unique("fb-main"), unique("fb-spare"), unique("fb-gone")
    for path in (CHAT, "/v1/responses"):
        upstream.route(path, openai_error(503, "overloaded", "server_error"))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare) + _table(gone, spare))
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    await _echo_worker(stack, api, spare)
    header, text, _ = await _response_served_by(api, primary)
    assert (header, text) == (spare, "hello there")
    header, text, _ = await _response_served_by(api, primary, stream=True)
    assert (header, text) == (spare, "hello there")
    assert len(upstream.received) >= 2  # the primary was tried each time
    assert await _fallback_count(api, "upstream_error", primary, spare) == 2
    # a model whose only worker has gone
    left = await _echo_worker(stack, api, gone)
    await left.close()
    await wait_for(lambda: not api.runtime.registry.workers_for(gone))
    header, text, _ = await _response_served_by(api, gone)
    assert (header, text) == (spare, "hello there")
    assert await _fallback_count(api, "no_worker", gone, spare) == 1


async def test_a_responses_request_error_does_not_fall_back(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    primary, spare = unique("fb-main"), unique("fb-spare")
    for path in (CHAT, "/v1/responses"):
        upstream.route(path, openai_error(400, "bad temperature", "invalid_request_error"))
    table = tmp_path / "models.toml"
    _write(table, _table(primary, spare))
    api = await stack.api(models_file=str(table))
    await _openai_worker(stack, api, primary, f"{upstream.url}/v1", **QUICK)
    spare_worker = await _echo_worker(stack, api, spare)
    client = _client(api)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=primary, input="x")
    assert "bad temperature" in str(caught.value)
    assert spare_worker.outcomes == {}
    await client.close()
