"""The Responses API through an openai-backend worker in front of a chat-only upstream (a
real HTTP server speaking OpenAI's chat protocol): function tools, the tool result sent
back with previous_response_id, streamed function-call events, an upstream error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for
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
    model = unique("gpt")
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
    assert sent["reasoning_effort"] == "low"  # the openai backend passes the body through
    assert sent["max_completion_tokens"] == 33
    assert (sent["temperature"], sent["top_p"]) == (0.2, 0.5)


async def test_upstream_error_is_openai_shaped(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, openai_error(400, "bad thing", code="invalid_value", param="messages"))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=model, input="x")
    assert "bad thing" in str(caught.value)


# --- an upstream that serves /v1/responses itself ----------------------------------------


def upstream_responses(text: str, usage: tuple[int, int] = (9, 2)) -> Reply:
    """What an OpenAI-style `/v1/responses` stream looks like, with the upstream's own ids."""
    base = {
        "id": "resp_upstream1", "object": "response", "created_at": 1731000000,
        "status": "in_progress", "error": None, "incomplete_details": None,
        "instructions": None, "max_output_tokens": None, "model": "upstream-model",
        "output": [], "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": None, "store": False, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": 1.0, "truncation": "disabled", "metadata": {}, "background": False,
    }  # fmt: skip
    item = {"id": "msg_up1", "type": "message", "status": "in_progress", "role": "assistant"}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    done_item = {**item, "status": "completed", "content": [{**part, "text": text}]}
    final = {**base, "status": "completed", "completed_at": 1731000001, "output": [done_item]}
    final["usage"] = {
        "input_tokens": usage[0], "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage[1], "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": sum(usage),
    }  # fmt: skip
    where = {"item_id": "msg_up1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": base},
        {"type": "response.in_progress", "response": base},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **where, "part": part},
        {"type": "response.output_text.delta", **where, "delta": text, "logprobs": [],
         "obfuscation": "abc"},
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    chunks = [
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n".encode()
        for i, e in enumerate(events)
    ]
    return Reply(chunks=chunks, content_type="text/event-stream")


async def _passthrough(stack, upstream, **worker: object) -> tuple[str, openai.AsyncOpenAI]:  # type: ignore[no-untyped-def]
    """A model served by a pass-through worker in front of `upstream`, and a client."""
    model = unique("gpt")
    api = await stack.api()
    served = await stack.worker(
        model=[f"{model}=upstream-model"],
        backend="openai",
        backend_url=f"{upstream.url}/v1",
        responses_passthrough=True,
        **worker,
    )
    await wait_for(lambda: served.id in {w.id for w in api.runtime.registry.workers_for(model)})
    return model, openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def test_passthrough_to_an_upstream_that_serves_responses(stack, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = await _passthrough(stack, upstream)
    upstream.route("/v1/responses", upstream_responses("first answer"))
    first = await client.responses.create(model=model, input="hi", metadata={"k": "v"})
    assert first.output_text == "first answer" and first.id.startswith("resp_")
    assert first.id != "resp_upstream1" and first.model == model and first.store is True
    assert first.usage is not None and first.usage.input_tokens == 9
    sent = upstream.last.json()
    assert upstream.last.path == "/v1/responses"
    assert sent["model"] == "upstream-model" and sent["store"] is False
    assert sent["stream"] is True and sent["metadata"] == {"k": "v"}

    upstream.route("/v1/responses", upstream_responses("second answer"))
    stream = await client.responses.create(
        model=model, input="again", previous_response_id=first.id, stream=True
    )
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(9))
    delta = next(e for e in events if e.type == "response.output_text.delta")
    assert delta.obfuscation == "abc"  # type: ignore[union-attr]  # unknown fields pass through
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.previous_response_id == first.id
    assert final.response.id == events[0].response.id != "resp_upstream1"  # type: ignore[union-attr]
    sent = upstream.last.json()
    assert "previous_response_id" not in sent
    assert [m.get("role") for m in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == "first answer"
    stored = await client.responses.retrieve(final.response.id)
    assert stored.output_text == "second answer"
    await client.close()


async def test_a_passthrough_longer_than_the_first_token_deadline_is_not_cut(
    stack, upstream
) -> None:  # type: ignore[no-untyped-def]
    """Output events are progress: with a 1 s first-token deadline an upstream stream of
    about 3.5 s (an event every 0.4 s) comes through whole, streamed and not."""
    model, client = await _passthrough(stack, upstream, backend_first_token_timeout=1.0)
    slow = upstream_responses("slow answer")
    slow.gap = 0.4
    upstream.route("/v1/responses", slow)
    stream = await client.responses.create(model=model, input="hi", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-1] == "response.completed"
    assert len(events) == len(slow.chunks)
    whole = await client.responses.create(model=model, input="hi")
    assert whole.output_text == "slow answer" and whole.status == "completed"
    await client.close()


async def test_a_stream_that_fails_after_it_began_ends_with_response_failed(
    served, upstream
) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    reply = openai_chat(["one ", "two ", "three"])
    reply.drop_after = 3  # the upstream connection breaks mid-answer
    upstream.route(CHAT, reply)
    stream = await client.responses.create(model=model, input="count", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert any(e.type == "response.output_text.delta" for e in events)
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed" and last.response.error is not None
    assert last.response.error.code == "server_error"
    assert last.response.id == events[0].response.id  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        assert_valid("ResponseStreamEvent", dump(event))
    stored = await client.responses.retrieve(last.response.id)  # the announced id is readable
    assert stored.status == "failed" and stored.error is not None
    assert stored.error.code == "server_error"
    assert_valid("Response", dump(stored))


async def test_a_whole_response_that_fails_is_stored_failed(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, client = served
    upstream.route(CHAT, openai_error(500, "the GPU caught fire", type="server_error"))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model=model, input="x")
    response_id = caught.value.response.headers["x-request-id"]
    assert response_id.startswith("resp_")
    stored = await client.responses.retrieve(response_id)
    assert stored.status == "failed" and stored.error is not None
    assert stored.error.code == "server_error" and "GPU" not in stored.error.message
    assert_valid("Response", dump(stored))
    upstream.route(CHAT, openai_error(400, "bad thing", param="messages"))
    with pytest.raises(openai.BadRequestError) as refused:  # a refused request is no response
        await client.responses.create(model=model, input="x")
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(refused.value.response.headers["x-request-id"])
