"""`/v1/messages` on an `anthropic` worker: the request reaches a real HTTP server speaking
Anthropic's protocol byte for byte (only `model` changed; the client's `anthropic-version`
and `anthropic-beta` forwarded, its key not), and the answer comes back as that server sent
it — the whole Message, or every SSE event with thinking, signatures and cache usage.
The usage (input, output, cache reads, cache writes) is booked and priced; count_tokens
asks the upstream and costs nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmq.api.tenancy import Price, TenantStore, connect
from tests.e2e.messages_support import keyed_api, raw_stream, serving
from tests.spec.anthropic import assert_message
from tests.stack import unique
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    anthropic_event,
    json_reply,
)

UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
        {"type": "text", "text": "Bonjour!"},
    ],
    "model": UPSTREAM_MODEL,
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 100,
              "cache_read_input_tokens": 400, "output_tokens": 30,
              "service_tier": "standard"},
}  # fmt: skip


def stream_events() -> list[dict[str, Any]]:
    start = {**MESSAGE, "content": [], "stop_reason": None,
             "usage": {**MESSAGE["usage"], "output_tokens": 1}}  # type: ignore[dict-item]  # fmt: skip
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Let me think."}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "text_delta", "text": "Bon"}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "text_delta", "text": "jour!"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    ]  # fmt: skip


def stream_reply() -> Reply:
    return Reply(
        chunks=[anthropic_event(e) for e in stream_events()], content_type="text/event-stream"
    )


@pytest.fixture
async def claude(stack, redis_server, upstream: FakeUpstream, tmp_path: Path):  # type: ignore[no-untyped-def]
    model = unique("claude")
    key_file = tmp_path / "anthropic.key"
    key_file.write_text("sk-ant-worker-secret\n")
    keyed = await keyed_api(stack, redis_server.url)
    await stack.worker(
        model=[f"{model}={UPSTREAM_MODEL}"], backend="anthropic", backend_url=upstream.url,
        api_key_file=str(key_file), breaker_threshold=100,
    )  # fmt: skip
    await serving(keyed, model)
    yield keyed, model


RAW_BODY = (
    b'{"model": "%s", "max_tokens": 1024,\n'
    b' "system": [{"type": "text", "text": "You are terse.",'
    b' "cache_control": {"type": "ephemeral", "ttl": "1h"}}],\n'
    b' "messages": [{"role": "user", "content": [{"type": "text", "text": "Bonjour?",'
    b' "cache_control": {"type": "ephemeral"}}]}],\n'
    b' "thinking": {"type": "enabled",   "budget_tokens": 1024},\n'
    b' "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},\n'
    b' "a_field_llmq_never_heard_of": [1, 2.50, "x"]}'
)  # fmt: skip


async def test_passed_through_byte_for_byte(claude, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model = claude
    answer = json.dumps(MESSAGE).encode()
    upstream.route("/v1/messages", Reply(chunks=[answer], chunked=False))
    headers = {
        "x-api-key": keyed.key, "anthropic-version": "2023-06-01",
        "anthropic-beta": "context-management-2025-06-27,interleaved-thinking-2025-05-14",
        "content-type": "application/json",
    }  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(
            f"{keyed.url}/v1/messages?beta=true", content=RAW_BODY % model.encode(),
            headers=headers,
        )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.content == answer  # as Anthropic sent it, signatures and all
    assert_message(resp.json())
    got = upstream.last
    assert got.path == "/v1/messages"
    sent = json.loads(RAW_BODY % model.encode())
    assert got.json() == {**sent, "model": UPSTREAM_MODEL}
    for value in (b'{"type": "enabled",   "budget_tokens": 1024}', b'[1, 2.50, "x"]'):
        assert value in got.body  # every other field keeps its bytes
    assert got.headers["anthropic-version"] == "2023-06-01"
    assert got.headers["anthropic-beta"] == headers["anthropic-beta"]
    assert got.headers["x-api-key"] == "sk-ant-worker-secret"  # the worker's, never the client's
    assert resp.headers["request-id"] == resp.headers["x-request-id"]


async def test_stream_relayed_event_for_event(claude, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model = claude
    upstream.route("/v1/messages", stream_reply())
    body = {"model": model, "max_tokens": 2048, "messages": [{"role": "user", "content": "Hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024}}  # fmt: skip
    resp, events = await raw_stream(keyed, body)
    assert resp.status_code == 200
    assert events == stream_events()  # every event, in order, as the upstream sent it
    assert upstream.last.json()["stream"] is True
    async with keyed.client() as client:
        upstream.route("/v1/messages", stream_reply())
        async with client.messages.stream(**body) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.signature == "EqQBCgIYAhIM1gbcDa9GJwZA"
    assert text.type == "text" and text.text == "Bonjour!"
    assert final.usage.cache_read_input_tokens == 400


async def test_cache_reads_and_writes_booked_and_priced(claude, upstream, redis_server) -> None:  # type: ignore[no-untyped-def]
    keyed, model = claude
    redis = connect(redis_server.url)
    price = Price(input_per_1m=3.0, output_per_1m=15.0, cached_input_per_1m=0.3,
                  cache_write_per_1m=3.75)  # fmt: skip
    await TenantStore(redis).set_price(model, price)
    await redis.aclose()
    upstream.route("/v1/messages", stream_reply())
    body = {"model": model, "max_tokens": 2048, "messages": [{"role": "user", "content": "Hi"}]}
    resp, _ = await raw_stream(keyed, body)
    entry = await keyed.booked(resp.headers["request-id"])
    assert (entry.prompt_tokens, entry.cached_tokens, entry.completion_tokens) == (512, 400, 30)
    expected = (12 * 3.0 + 400 * 0.3 + 100 * 3.75 + 30 * 15.0) / 1e6
    assert entry.cost_usd == pytest.approx(expected)


async def test_count_tokens_from_the_upstream(claude, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model = claude
    upstream.route("/v1/messages/count_tokens", json_reply(200, {"input_tokens": 2095}))
    async with keyed.client() as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model=model, messages=[{"role": "user", "content": "Hello, world"}]
        )
    assert raw.http_response.json() == {"input_tokens": 2095}
    assert raw.headers["x-llmq-token-count"] == "upstream"
    got = upstream.last
    assert got.path == "/v1/messages/count_tokens" and got.json()["model"] == UPSTREAM_MODEL
    assert await keyed.ledger() == []


async def test_upstream_errors_keep_their_meaning(claude, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model = claude
    body = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    error = {"type": "error", "error": {"type": "invalid_request_error",
                                        "message": "messages.0: bad role"}}  # fmt: skip
    upstream.route("/v1/messages", json_reply(400, error))
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{keyed.url}/v1/messages", json=body,
                                 headers={"x-api-key": keyed.key})  # fmt: skip
    assert resp.status_code == 400
    assert resp.json()["error"] == {"type": "invalid_request_error",
                                    "message": "messages.0: bad role"}  # fmt: skip
    # a stream that fails after it started ends with an `error` event
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = [*stream_events()[:4], overloaded]
    upstream.route("/v1/messages", Reply(chunks=[anthropic_event(e) for e in events],
                                         content_type="text/event-stream"))  # fmt: skip
    _, got = await raw_stream(keyed, body)
    assert got[-1]["type"] == "error" and got[-1]["error"]["type"] == "overloaded_error"
