"""Client matrix: openai-python against llmq and a chat upstream that really calls tools,
writes JSON and reasons — chat (text, stream, tool round trip, JSON schema) and the
Responses API (two turns, a tool loop, JSON, reasoning summaries, streaming)."""

from __future__ import annotations

import json

import openai

from tests.e2e.clients import GREETING, REASONING, SUNNY, WEATHER, Served, served
from tests.spec import assert_valid

__all__ = ["served"]
TOOL = {"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}  # fmt: skip
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                           "temperature": {"type": "number"}}}  # fmt: skip


async def test_chat(served: Served) -> None:
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    text = await client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "hi"}]
    )
    assert text.choices[0].message.content == GREETING
    stream = await client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert (
        "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == GREETING
    )
    chat_tool = {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    messages: list = [{"role": "user", "content": "weather in Oslo?"}]
    first = await client.chat.completions.create(
        model=served.model, messages=messages, tools=[chat_tool]
    )  # type: ignore[list-item]
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Oslo"
    }  # type: ignore[union-attr]
    messages += [
        first.choices[0].message,
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = await client.chat.completions.create(
        model=served.model, messages=messages, tools=[chat_tool]
    )  # type: ignore[list-item]
    assert second.choices[0].message.content == SUNNY
    parsed = await client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )  # fmt: skip
    assert json.loads(parsed.choices[0].message.content or "") == WEATHER
    await client.close()


async def test_responses(served: Served) -> None:
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    first = await client.responses.create(
        model=served.model, input="hi", reasoning={"effort": "low", "summary": "auto"}
    )
    assert first.output_text == GREETING
    assert first.output[0].type == "reasoning" and first.output[0].summary[0].text == REASONING
    second = await client.responses.create(
        model=served.model, input="and again", previous_response_id=first.id
    )
    assert second.output_text == GREETING
    assert [m["role"] for m in served.chat_bodies()[-1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]
    asked = await client.responses.create(model=served.model, input="weather?", tools=[TOOL])  # type: ignore[list-item]
    call = asked.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    done = await client.responses.create(
        model=served.model, previous_response_id=asked.id, tools=[TOOL],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    assert done.output_text == SUNNY
    events = []
    fmt = {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}}
    async with client.responses.stream(model=served.model, input="json", text=fmt) as stream:  # type: ignore[arg-type]
        async for event in stream:
            events.append(event)
        final = await stream.get_final_response()
    assert json.loads(final.output_text) == WEATHER
    for event in events:
        assert_valid(
            "ResponseStreamEvent", event.model_dump(mode="json", exclude_unset=True, by_alias=True)
        )
    await client.close()
