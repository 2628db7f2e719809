"""Translating backends never drop silently (issue 10), end to end with the `openai` SDK.

Anthropic: cache_control on parts and system blocks, cache reads as cached_tokens,
reasoning_effort as a thinking budget and thinking back as reasoning_content, response_format
as a forced tool whose input is the answer. Ollama: tool_choice "none" sends no tools, tool
results keep their call id and name, reasoning_effort as `think`. Both: every body and chunk
validates against OpenAI's spec, and a parameter they cannot honour is a 400 naming it that
never reaches the upstream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    anthropic_events,
    anthropic_stream,
    ollama_chat,
)

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


async def _stack(stack: Any, backend: str, url: str) -> tuple[Any, str]:
    model = unique(backend)
    api = await stack.api()
    worker = await stack.worker(model=[f"{model}=up"], backend=backend, backend_url=url)
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    return api, model


def _client(api: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def _sse(api: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{api.url}{CHAT}", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def _post(api: Any, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{api.url}{CHAT}", json=body)


def _thinking_events() -> list[dict[str, Any]]:
    """A thinking block before the text, and a cache read of 100 tokens."""
    events = anthropic_events(["Paris"], input_tokens=20, output_tokens=9, cache_read=100)
    thinking = [
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "The capital"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}},
        {"type": "content_block_stop", "index": 0},
    ]  # fmt: skip
    for event in events:
        if "index" in event:
            event["index"] += 1
    return events[:1] + thinking + events[1:]


async def test_anthropic_caching_thinking_and_spec_valid_replies(
    upstream: FakeUpstream, stack: Any
) -> None:
    upstream.route(MESSAGES, anthropic_stream(_thinking_events()))
    api, model = await _stack(stack, "anthropic", upstream.url)
    cached = {"type": "ephemeral"}
    rules = {"type": "text", "text": "Long rules", "cache_control": cached}
    question = {"type": "text", "text": "Capital of France?", "cache_control": cached}
    messages: list[Any] = [
        {"role": "system", "content": [rules]},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [question]},
    ]
    reply = await _client(api).chat.completions.create(
        model=model, messages=messages, reasoning_effort="low", max_tokens=4000
    )
    sent = upstream.last.json()
    assert sent["system"] == [
        {"type": "text", "text": "Long rules", "cache_control": cached},
        {"type": "text", "text": "Be brief."},
    ]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "Capital of France?", "cache_control": cached}
    ]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    message = reply.choices[0].message
    assert message.content == "Paris" and message.model_extra == {
        "reasoning_content": "The capital"
    }
    assert reply.usage is not None and reply.usage.prompt_tokens == 120
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 100

    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    assert_valid("CreateChatCompletionResponse", (await _post(api, body)).json())
    chunks = await _sse(api, {**body, "stream": True, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    reasoning = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c["choices"]]
    assert "The capital" in reasoning
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 100


async def test_anthropic_response_format_is_a_forced_tool_whose_input_is_the_answer(
    upstream: FakeUpstream, stack: Any
) -> None:
    events = anthropic_events(
        [], stop_reason="tool_use", tool=("toolu_1", "city", ['{"name": ', '"Paris"}'])
    )
    upstream.route(MESSAGES, anthropic_stream(events))
    api, model = await _stack(stack, "anthropic", upstream.url)
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    reply = await _client(api).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Capital of France?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    sent = upstream.last.json()
    assert sent["tools"] == [{"name": "city", "input_schema": schema}]
    assert sent["tool_choice"] == {"type": "tool", "name": "city"}
    choice = reply.choices[0]
    assert json.loads(choice.message.content or "") == {"name": "Paris"}
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None


async def test_ollama_tool_choice_tool_results_and_spec_valid_replies(
    upstream: FakeUpstream, stack: Any
) -> None:
    upstream.route("/api/chat", ollama_chat(["Sunny"]))
    api, model = await _stack(stack, "ollama", upstream.url)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    messages: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]  # fmt: skip
    client = _client(api)
    await client.chat.completions.create(
        model=model, messages=messages, tools=tools, tool_choice="none", reasoning_effort="high"
    )
    sent = upstream.last.json()
    assert "tools" not in sent
    assert sent["think"] == "high"
    assert sent["messages"][2] == {
        "role": "tool", "content": "sunny", "tool_call_id": "call_9", "tool_name": "weather"
    }  # fmt: skip
    await client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert upstream.last.json()["tools"] == tools

    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    assert_valid("CreateChatCompletionResponse", (await _post(api, body)).json())
    for chunk in await _sse(api, {**body, "stream": True}):
        assert_valid("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize(
    ("backend", "path", "extra", "param"),
    [
        ("anthropic", MESSAGES, {"seed": 7}, "seed"),
        ("anthropic", MESSAGES, {"logit_bias": {"50256": -100}}, "logit_bias"),
        ("anthropic", MESSAGES, {"n": 2}, "n"),
        ("anthropic", MESSAGES, {"logprobs": True}, "logprobs"),
        ("anthropic", MESSAGES, {"guided_json": {"type": "object"}}, "guided_json"),
        ("ollama", "/api/chat", {"logit_bias": {"1": 2}}, "logit_bias"),
        ("ollama", "/api/chat", {"tool_choice": "required", "tools": []}, "tool_choice"),
        ("ollama", "/api/chat", {"parallel_tool_calls": False}, "parallel_tool_calls"),
        ("ollama", "/api/chat", {"n": 3}, "n"),
        ("ollama", "/api/chat", {"service_tier": "flex"}, "service_tier"),
    ],
)
async def test_a_parameter_a_backend_cannot_honour_is_a_400_naming_it(
    upstream: FakeUpstream, stack: Any, backend: str, path: str, extra: dict[str, Any], param: str
) -> None:
    upstream.route(path, anthropic_stream(anthropic_events(["x"])))
    api, model = await _stack(stack, backend, upstream.url)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    resp = await _post(api, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert_valid("ErrorResponse", error)
    assert error["error"]["code"] == "unsupported_parameter"
    assert error["error"]["param"] == param and f"`{param}`" in error["error"]["message"]
    assert [r.path for r in upstream.received if r.path == path] == []
    with pytest.raises(openai.BadRequestError):
        await _client(api).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )


async def test_an_image_url_is_a_400_and_never_fetched(upstream: FakeUpstream, stack: Any) -> None:
    upstream.route(MESSAGES, anthropic_stream(anthropic_events(["x"])))
    api, model = await _stack(stack, "anthropic", upstream.url)
    part = {"type": "image_url", "image_url": {"url": f"{upstream.url}/cat.png"}}
    resp = await _post(api, {"model": model, "messages": [{"role": "user", "content": [part]}]})
    assert resp.status_code == 400, resp.text
    assert_valid("ErrorResponse", resp.json())
    assert upstream.received == [] or all(r.path != "/cat.png" for r in upstream.received)
    assert all(r.path != MESSAGES for r in upstream.received)
