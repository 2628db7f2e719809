"""Drop-in means lossless (issue 10), end to end with the official `openai` SDK:
client → api → JetStream → worker → recording fake upstream over HTTP, and back.

Request fields llmq does not declare reach an OpenAI-compatible upstream byte for byte (also
when the api applies the model table's defaults); every choice (n=2), logprobs, reasoning,
refusals, usage details, system_fingerprint and service_tier reach the client; every body
and chunk validates against OpenAI's OpenAPI document; the echo backend honours `n` and
books every choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    openai_usage,
    sse_data,
)

CHAT = "/v1/chat/completions"


async def _serve(stack: Any, api: Any, model: str, **overrides: Any) -> Any:
    worker = await stack.worker(model=[model], **overrides)
    public = model.partition("=")[0]
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(public)})
    return worker


def _client(api: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def _sse(api: Any, body: dict[str, Any], path: str = CHAT) -> list[dict[str, Any]]:
    """The chunks of a streamed reply, decoded (the terminal [DONE] checked, not returned)."""
    events: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{api.url}{path}", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def _post(api: Any, body: dict[str, Any], path: str = CHAT) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{api.url}{path}", json=body)


# --- what the upstream streams: two choices and every field OpenAI sends -----------------


def _chunk(choices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1731000000,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_f33640a400",
        "choices": choices,
        **top,
    }


def _logprobs(token: str) -> dict[str, Any]:
    item = {"token": token, "logprob": -0.25, "bytes": list(token.encode()), "top_logprobs": []}
    return {"content": [item], "refusal": None}


def two_choices_reply() -> Reply:
    """n=2 with logprobs, reasoning, a refusal, a tool call, usage details; `usage: null` on
    every chunk but the last (what OpenAI sends with include_usage)."""
    chunks = [
        _chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in (0, 1)], usage=None),
        _chunk([{"index": 0, "delta": {"reasoning_content": "Think."}, "finish_reason": None}],
               usage=None),
        _chunk([{"index": 0, "delta": {"content": "Yes"}, "logprobs": _logprobs("Yes"),
                 "finish_reason": None}], usage=None),
        _chunk([{"index": 1, "delta": {"refusal": "No can do"}, "logprobs": None,
                 "finish_reason": None}], usage=None),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"},
                {"index": 1, "delta": {}, "finish_reason": "stop"}], usage=None),
        _chunk([], usage=openai_usage(9, 6) | {
            "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
        }),
    ]  # fmt: skip
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


async def test_unknown_fields_reach_the_upstream_byte_for_byte(
    upstream: FakeUpstream, stack: Any, tmp_path: Path
) -> None:
    """Through the SDK (named and extra_body fields) and as raw bytes (odd spacing, 1.50):
    only the model changes (and stream_options, for a stream), also when the model table adds
    a default."""
    public = unique("pass")
    models = tmp_path / "models.toml"
    models.write_text(f'[defaults."{public}"]\ntemperature = 0.3\n')
    upstream.route(CHAT, two_choices_reply())
    api = await stack.api(models_file=str(models))
    await _serve(stack, api, f"{public}=gpt-4o", backend="openai", backend_url=f"{upstream.url}/v1")

    await _client(api).chat.completions.create(
        model=public,
        messages=[{"role": "user", "content": "hi"}],
        reasoning_effort="low",
        service_tier="flex",
        store=True,
        prediction={"type": "content", "content": "Yes"},
        extra_body={
            "top_k": 40,
            "chat_template_kwargs": {"enable_thinking": False},
            "guided_json": {"type": "object"},
        },
    )
    sent = upstream.last.json()
    # a non-streamed request is one non-streamed upstream call: nothing about streams added
    assert sent["model"] == "gpt-4o" and "stream" not in sent and "stream_options" not in sent
    assert sent["temperature"] == 0.3  # the model table's default for an absent field
    for key, value in {
        "reasoning_effort": "low",
        "service_tier": "flex",
        "store": True,
        "prediction": {"type": "content", "content": "Yes"},
        "top_k": 40,
        "chat_template_kwargs": {"enable_thinking": False},
        "guided_json": {"type": "object"},
    }.items():
        assert sent[key] == value, key

    raw = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}],'
        b' "guided_json": {"type" :  "object"}, "repetition_penalty": 1.50,'
        b' "temperature": 0.7, "x_vendor": [1, {"a" : null}]}' % public.encode()
    )
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(
            f"{api.url}{CHAT}", content=raw, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 200, resp.text
    body = upstream.last.body
    for exact in (
        b'"guided_json":{"type" :  "object"}',
        b'"repetition_penalty":1.50',
        b'"temperature":0.7',
        b'"x_vendor":[1, {"a" : null}]',
        b'"messages":[{"role": "user", "content": "hi"}]',
    ):
        assert exact in body, exact


async def test_two_choices_and_every_field_reach_the_client(
    upstream: FakeUpstream, stack: Any
) -> None:
    public = unique("pass")
    upstream.route(CHAT, two_choices_reply())
    api = await stack.api()
    await _serve(stack, api, f"{public}=gpt-4o", backend="openai", backend_url=f"{upstream.url}/v1")
    client = _client(api)

    reply = await client.chat.completions.create(
        model=public, messages=[{"role": "user", "content": "hi"}], n=2, logprobs=True
    )
    assert [c.index for c in reply.choices] == [0, 1]
    first, second = reply.choices
    assert first.message.content == "Yes" and first.finish_reason == "stop"
    assert first.message.model_extra == {"reasoning_content": "Think."}
    assert first.logprobs is not None and first.logprobs.content is not None
    assert [t.token for t in first.logprobs.content] == ["Yes"]
    assert second.message.refusal == "No can do" and second.message.content == ""
    assert reply.system_fingerprint == "fp_f33640a400" and reply.service_tier == "default"
    assert reply.model == public and reply.id.startswith("chatcmpl-")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 6)
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 2

    body = await _post(api, {"model": public, "messages": [{"role": "user", "content": "x"}]})
    assert_valid("CreateChatCompletionResponse", body.json())

    stream = await client.chat.completions.create(
        model=public,
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    seen: dict[int, str] = {0: "", 1: ""}
    usage = None
    async for chunk in stream:
        assert chunk.model == public and chunk.system_fingerprint == "fp_f33640a400"
        for choice in chunk.choices:
            seen[choice.index] += choice.delta.content or choice.delta.refusal or ""
        usage = chunk.usage or usage
    assert seen == {0: "Yes", 1: "No can do"}
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4

    chunks = await _sse(api, {"model": public, "messages": [{"role": "user", "content": "x"}],
                              "stream": True})  # fmt: skip
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk  # the client did not ask for it
    assert {c["index"] for chunk in chunks for c in chunk["choices"]} == {0, 1}


async def test_a_null_system_fingerprint_is_left_out(upstream: FakeUpstream, stack: Any) -> None:
    public = unique("pass")
    chunks = [
        _chunk([{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                 "finish_reason": None}], system_fingerprint=None, service_tier=None),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], system_fingerprint=None,
               service_tier=None),
    ]  # fmt: skip
    upstream.route(CHAT, Reply(chunks=sse_data(chunks), content_type="text/event-stream"))
    api = await stack.api()
    await _serve(stack, api, f"{public}=m", backend="openai", backend_url=f"{upstream.url}/v1")
    body = await _post(api, {"model": public, "messages": [{"role": "user", "content": "x"}]})
    whole = body.json()
    assert "system_fingerprint" not in whole and "service_tier" not in whole
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "ok", "refusal": None}
    assert_valid("CreateChatCompletionResponse", whole)
    streamed = await _sse(api, {"model": public, "messages": [{"role": "user", "content": "x"}],
                                "stream": True})  # fmt: skip
    for chunk in streamed:
        assert "system_fingerprint" not in chunk
        assert_valid("CreateChatCompletionStreamResponse", chunk)


# --- echo: n choices, booked, spec-valid ----------------------------------------------------


async def test_echo_honours_n_books_every_choice_and_is_spec_valid(stack: Any) -> None:
    model = unique("echo")
    api = await stack.api()
    await _serve(stack, api, model)
    client = _client(api)
    messages = [{"role": "user", "content": "one two three"}]

    reply = await client.chat.completions.create(model=model, messages=messages, n=2)
    assert [(c.index, c.message.content) for c in reply.choices] == [
        (0, "one two three"),
        (1, "one two three"),
    ]
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    whole = (await _post(api, {"model": model, "messages": messages, "n": 3})).json()
    assert len(whole["choices"]) == 3 and whole["usage"]["completion_tokens"] == 9
    assert_valid("CreateChatCompletionResponse", whole)
    assert "system_fingerprint" not in whole

    chunks = await _sse(api, {"model": model, "messages": messages, "n": 2, "stream": True,
                              "stream_options": {"include_usage": True}})  # fmt: skip
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: "one two three", 1: "one two three"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6

    text = (await _post(api, {"model": model, "prompt": "a b", "n": 2}, "/v1/completions")).json()
    assert [c["text"] for c in text["choices"]] == ["a b", "a b"]
    assert_valid("CreateCompletionResponse", text)
    vectors = await _post(api, {"model": model, "input": ["a", "b"]}, "/v1/embeddings")
    assert_valid("CreateEmbeddingResponse", vectors.json())
