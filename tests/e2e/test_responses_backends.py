"""The Responses API through an openai-backend worker in front of a chat-only upstream (a
real HTTP server speaking OpenAI's chat protocol): function tools, the tool result sent
back with previous_response_id, streamed function-call events, an upstream error."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.spec import assert_valid
from tests.stack import wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    json_reply,
    openai_chat,
    openai_chunk,
    openai_error,
    openai_usage,
    sse_data,
)

CHAT = "/v1/chat/completions"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


def tool_call_reply() -> Reply:
    call = {"index": 0, "id": "call_42", "type": "function"}
    named = {**call, "function": {"name": "get_weather", "arguments": ""}}
    chunks = [
        openai_chunk({"role": "assistant", "content": None}),
        openai_chunk({"tool_calls": [named]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        openai_chunk({}, "tool_calls"),
        openai_chunk(usage=openai_usage(20, 7), empty=True),
    ]  # fmt: skip
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        server.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        yield server


@pytest.fixture
async def served(stack, upstream):  # type: ignore[no-untyped-def]
    model = f"gpt-{uuid.uuid4().hex[:6]}"
    api = await stack.api()
    worker = await stack.worker(
        model=[model], backend="openai", backend_url=f"{upstream.url}/v1", breaker_threshold=100
    )
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    yield model, client
    await client.close()


async def test_function_tool_round_trip(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, tool_call_reply())
    first = await client.responses.create(
        model=model, input="weather in Oslo?", tools=[TOOL], tool_choice="auto"
    )
    assert_valid("Response", dump(first))
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id == "call_42" and json.loads(call.arguments) == {"city": "Oslo"}
    assert first.usage is not None
    assert (first.usage.input_tokens, first.usage.output_tokens) == (20, 7)
    sent = upstream.last.json()
    assert upstream.last.path == CHAT
    assert sent["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    ]
    assert sent["tool_choice"] == "auto"

    upstream.route(CHAT, openai_chat(["It is ", "sunny."], usage=(30, 3)))
    second = await client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_42", "output": "sunny"}],
        tools=[TOOL],
    )
    assert second.output_text == "It is sunny."
    assert_valid("Response", dump(second))
    messages = upstream.last.json()["messages"]
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]},
        {"role": "assistant", "tool_calls": [
            {"id": "call_42", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_42", "content": "sunny"},
    ]  # fmt: skip


async def test_streamed_function_call_events(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, tool_call_reply())
    stream = await client.responses.create(model=model, input="weather?", tools=[TOOL], stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds.count("response.function_call_arguments.delta") == 2
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == '{"city":"Oslo"}'  # type: ignore[union-attr]
    assert kinds[-1] == "response.completed"
    for event in events:
        assert_valid("ResponseStreamEvent", dump(event))
    assert upstream.last.json()["stream"] is True


async def test_structured_output_and_options_reach_the_upstream(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, openai_chat(['{"a":1}']))
    resp = await client.responses.create(
        model=model,
        input="json please",
        text={"format": {"type": "json_schema", "name": "obj", "schema": {"type": "object"}}},
        reasoning={"effort": "low"},
        max_output_tokens=33,
        temperature=0.2,
        top_p=0.5,
    )
    assert resp.output_text == '{"a":1}'
    sent = upstream.last.json()
    assert sent["response_format"]["json_schema"]["name"] == "obj"
    # `reasoning_effort` is translated too (tests/worker/test_responses_translation.py); the
    # chat backends carry it once their request type keeps every field (issue 10).
    assert sent["max_completion_tokens"] == 33
    assert (sent["temperature"], sent["top_p"]) == (0.2, 0.5)


async def test_upstream_error_is_openai_shaped(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, openai_error(400, "bad thing", code="invalid_value", param="messages"))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=model, input="x")
    assert "bad thing" in str(caught.value)
