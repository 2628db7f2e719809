"""`/v1/messages` on a chat backend, with the official anthropic SDK: an `openai` worker in
front of a real HTTP server speaking OpenAI's chat protocol. Plain, streamed (the SDK's
`messages.stream` helpers), a tools round trip, thinking, images, count_tokens, a field a
chat backend cannot honour; every body and event checked with the SDK's types (strict), the
usage booked in the tenant's ledger."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.messages_support import Keyed, keyed_api, raw_stream, serving
from tests.lazy import lazy
from tests.spec.anthropic import assert_count, assert_message
from tests.stack import unique
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    ollama_chat,
    openai_chat,
    openai_chunk,
    openai_error,
    openai_usage,
    sse_data,
)

anthropic = lazy("anthropic")  # 2 s to import: only where a test uses it

CHAT = "/v1/chat/completions"
WEATHER = {
    "name": "get_weather",
    "description": "the weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)


@pytest.fixture
async def chat_served(stack, redis_server, upstream):  # type: ignore[no-untyped-def]
    model = unique("gpt")
    keyed = await keyed_api(stack, redis_server.url)
    await stack.worker(
        model=[f"{model}=gpt-4o-mini"], backend="openai", backend_url=f"{upstream.url}/v1",
        breaker_threshold=100,
    )  # fmt: skip
    await serving(keyed, model)
    client = keyed.client()
    yield keyed, model, client
    await client.close()


def tool_call_reply(usage: tuple[int, int] = (20, 7)) -> Reply:
    named = {"index": 0, "id": "call_42", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    chunks = [
        openai_chunk({"role": "assistant", "content": None}),
        openai_chunk({"tool_calls": [named]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        openai_chunk({}, "tool_calls"),
        openai_chunk(usage=openai_usage(*usage), empty=True),
    ]
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


def reasoning_reply() -> Reply:
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"reasoning_content": "Oslo is in Norway. "}),
        openai_chunk({"reasoning_content": "It rains."}),
        openai_chunk({"content": "Rainy."}),
        openai_chunk({}, "stop"),
        openai_chunk(usage={**openai_usage(30, 9),
                            "prompt_tokens_details": {"cached_tokens": 12}}, empty=True),
    ]  # fmt: skip
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


USER = [{"role": "user", "content": "Hello, who are you?"}]


async def test_plain_message(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model, client = chat_served
    upstream.route(CHAT, openai_chat(["I am ", "a model."], usage=(11, 4)))
    raw = await client.messages.with_raw_response.create(
        model=model, max_tokens=100, system="be brief", messages=USER,
        stop_sequences=["END"], metadata={"user_id": "alice"},
        extra_body={"temperature": 0.3},  # this SDK version no longer offers it as an argument
    )  # fmt: skip
    message = assert_message(raw.http_response.json())
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert message.content[0].type == "text" and message.content[0].text == "I am a model."
    assert message.stop_reason == "end_turn" and message.model == model
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    sent = upstream.last.json()
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 100
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, *USER]
    assert (sent["temperature"], sent["stop"], sent["user"]) == (0.3, ["END"], "alice")
    entry = await keyed.booked(raw.headers["request-id"])
    assert (entry.prompt_tokens, entry.completion_tokens, entry.status) == (11, 4, "ok")
    assert entry.user == "alice"


async def test_streamed_with_the_sdk_helpers(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model, client = chat_served
    upstream.route(CHAT, openai_chat(["Hel", "lo", " there"], usage=(9, 3)))
    async with client.messages.stream(model=model, max_tokens=50, messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Hello there" and final.content[0].text == "Hello there"  # type: ignore[union-attr]
    assert final.usage.output_tokens == 3 and final.stop_reason == "end_turn"
    resp, events = await raw_stream(keyed, {"model": model, "max_tokens": 50, "messages": USER})
    assert resp.status_code == 200 and resp.headers["request-id"]
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop",
    ]  # fmt: skip
    assert events[-2]["usage"]["output_tokens"] == 3


async def test_tools_round_trip(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    _, model, client = chat_served
    upstream.route(CHAT, tool_call_reply())
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await client.messages.create(
        model=model, max_tokens=200, messages=ask, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "auto"},
    )  # fmt: skip
    (call,) = first.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.id == "call_42" and call.input == {"city": "Oslo"}
    assert first.stop_reason == "tool_use"
    assert upstream.last.json()["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]

    upstream.route(CHAT, openai_chat(["It is sunny."], usage=(30, 4)))
    history: list[Any] = [
        *ask,
        {"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
    ]  # fmt: skip
    async with client.messages.stream(
        model=model,
        max_tokens=200,
        messages=history,
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "It is sunny."  # type: ignore[union-attr]
    sent = upstream.last.json()["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_42", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}  # fmt: skip
    assert sent[2] == {"role": "tool", "tool_call_id": "call_42", "content": "sunny, 21 C"}


async def test_streamed_tool_call_events(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model, _ = chat_served
    upstream.route(CHAT, tool_call_reply())
    body = {"model": model, "max_tokens": 50, "messages": USER, "tools": [WEATHER]}
    _, events = await raw_stream(keyed, body)
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"] == {"type": "tool_use", "id": "call_42",
                                      "name": "get_weather", "input": {}}  # fmt: skip
    parts = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert json.loads("".join(parts)) == {"city": "Oslo"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


async def test_thinking(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model, client = chat_served
    upstream.route(CHAT, reasoning_reply())
    raw = await client.messages.with_raw_response.create(
        model=model, max_tokens=4000, messages=USER,
        thinking={"type": "enabled", "budget_tokens": 2048},
    )  # fmt: skip
    message = assert_message(raw.http_response.json())
    assert upstream.last.json()["reasoning_effort"] == "low"
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Oslo is in Norway. It rains."
    assert text.type == "text" and text.text == "Rainy."
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (18, 12)
    entry = await keyed.booked(raw.headers["request-id"])
    assert (entry.prompt_tokens, entry.cached_tokens, entry.completion_tokens) == (30, 12, 9)
    async with client.messages.stream(
        model=model, max_tokens=4000, messages=USER,
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:  # fmt: skip
        kinds = [event.type async for event in stream]
    assert "thinking" in kinds and "text" in kinds


async def test_images(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    _, model, client = chat_served
    upstream.route(CHAT, openai_chat(["A red dot."]))
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    message = await client.messages.create(
        model=model,
        max_tokens=50,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
    )
    assert message.content[0].text == "A red dot."  # type: ignore[union-attr]
    parts = upstream.last.json()["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "What is this?"},
    ]


async def test_count_tokens_is_an_estimate_and_free(chat_served, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    keyed, model, client = chat_served
    before = len(upstream.received)
    raw = await client.messages.with_raw_response.count_tokens(
        model=model, messages=[{"role": "user", "content": "one two three four five six"}],
        system="brief",
    )  # fmt: skip
    counted = assert_count(raw.http_response.json())
    assert counted.input_tokens >= 6
    assert raw.headers["x-llmq-token-count"] == "estimate"
    assert len(upstream.received) == before  # no upstream call
    assert await keyed.ledger() == []  # no booking, no quota


async def test_what_a_chat_backend_cannot_honour_is_named(
    chat_served, upstream: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    _, model, client = chat_served
    before = len(upstream.received)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model=model, max_tokens=50, messages=USER,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
        )  # fmt: skip
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert "web_search_20250305" in body["error"]["message"]
    assert len(upstream.received) == before


async def test_echo_worker_serves_messages(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("echo")
    keyed: Keyed = await keyed_api(stack, redis_server.url)
    await stack.worker(model=[model])
    await serving(keyed, model)
    async with keyed.client() as client:
        message = await client.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "say it back"}]
        )
    assert message.content[0].text == "say it back"  # type: ignore[union-attr]


async def test_aliases_defaults_limits_and_fallbacks(  # type: ignore[no-untyped-def]
    stack, redis_server, upstream: FakeUpstream, tmp_path
) -> None:
    """The model table applies as for chat: an alias resolves, a default temperature is set
    when the request has none, `max_tokens` is bounded by the model's limit, and a primary
    that fails before its first token falls back to the next model of its chain."""
    primary, spare = unique("primary"), unique("spare")
    table = tmp_path / "models.toml"
    table.write_text(
        f'[aliases]\nfast = "{primary}"\n\n[defaults."{primary}"]\ntemperature = 0.25\n\n'
        f'[models."{primary}"]\nmax_tokens = 500\nfallbacks = ["{spare}"]\n'
    )
    keyed = await keyed_api(stack, redis_server.url, models_file=str(table))
    await stack.worker(model=[primary], backend="openai", backend_url=f"{upstream.url}/v1",
                       breaker_threshold=100, max_deliver=1)  # fmt: skip
    await stack.worker(model=[spare])
    await serving(keyed, primary)
    await serving(keyed, spare)
    upstream.route(CHAT, openai_chat(["from the primary"]))
    async with keyed.client() as client:
        raw = await client.messages.with_raw_response.create(
            model="fast", max_tokens=100, messages=USER
        )
        assert raw.headers["x-llmq-model"] == primary
        sent = upstream.last.json()
        assert (sent["model"], sent["temperature"]) == (primary, 0.25)
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="fast", max_tokens=501, messages=USER)
        assert "500" in str(refused.value)
        upstream.route(CHAT, openai_error(500, "down", "server_error"))
        moved = await client.messages.with_raw_response.create(
            model="fast", max_tokens=100, messages=USER
        )
    assert moved.headers["x-llmq-model"] == spare
    assert assert_message(moved.http_response.json()).content[0].text == "Hello, who are you?"  # type: ignore[union-attr]


async def test_a_stream_cut_after_its_start_ends_with_an_error_event(  # type: ignore[no-untyped-def]
    chat_served, upstream: FakeUpstream
) -> None:
    keyed, model, client = chat_served
    upstream.route(CHAT, openai_chat(["one ", "two ", "three"], drop_after=3))
    resp, events = await raw_stream(keyed, {"model": model, "max_tokens": 50, "messages": USER})
    assert resp.status_code == 200
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert "message_stop" not in [e["type"] for e in events]
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(model=model, max_tokens=50, messages=USER) as stream:
            await stream.get_final_message()
    entry = await keyed.booked(resp.headers["request-id"])
    assert entry.status == "failed"


async def test_an_ollama_worker_serves_messages(  # type: ignore[no-untyped-def]
    stack, redis_server, upstream: FakeUpstream
) -> None:
    """The chat translation meets Ollama's own: a streamed answer with its exact counts."""
    model = unique("ollama")
    keyed = await keyed_api(stack, redis_server.url)
    await stack.worker(model=[f"{model}=llama3.2"], backend="ollama", backend_url=upstream.url)
    await serving(keyed, model)
    upstream.route("/api/chat", ollama_chat(["Hi ", "there"], prompt_eval_count=26, eval_count=2))
    resp, events = await raw_stream(
        keyed, {"model": model, "max_tokens": 20, "system": "terse", "messages": USER,
                "thinking": {"type": "enabled", "budget_tokens": 9000}},
    )  # fmt: skip
    assert resp.status_code == 200
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == "Hi there"
    assert events[-2]["usage"]["input_tokens"] == 26 and events[-2]["usage"]["output_tokens"] == 2
    sent = upstream.last.json()
    assert sent["model"] == "llama3.2" and sent["think"] == "high"
    assert sent["messages"][0] == {"role": "system", "content": "terse"}
    assert sent["options"]["num_predict"] == 20
