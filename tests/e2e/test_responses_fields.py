"""Nothing of a Responses request is dropped on the way to a chat upstream: each field is
mapped to its chat form, copied, passed through (vendor fields), kept by llmq, or refused
with a 400 naming it — proven field by field on the bodies the fake upstream recorded.
And reasoning as summary parts when `reasoning.summary` is asked for."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import Reply, openai_chat, openai_chunk, sse_data

CHAT = "/v1/chat/completions"

# (what the client adds to {"model", "input"}, what the chat body must then hold)
REACHES_THE_UPSTREAM: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"instructions": "be brief"}, {"messages": [{"role": "system", "content": "be brief"}]}),
    ({"temperature": 0.3}, {"temperature": 0.3}),
    ({"top_p": 0.9}, {"top_p": 0.9}),
    ({"max_output_tokens": 40}, {"max_completion_tokens": 40}),
    ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
    ({"include": ["message.output_text.logprobs"]}, {"logprobs": True}),
    ({"parallel_tool_calls": False}, {"parallel_tool_calls": False}),
    ({"user": "u-1"}, {"user": "u-1"}),
    ({"safety_identifier": "hashed-user"}, {"safety_identifier": "hashed-user"}),
    ({"prompt_cache_key": "k1"}, {"prompt_cache_key": "k1"}),
    ({"prompt_cache_retention": "24h"}, {"prompt_cache_retention": "24h"}),
    ({"service_tier": "flex"}, {"service_tier": "flex"}),
    ({"text": {"verbosity": "low"}}, {"verbosity": "low"}),
    ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
    ({"reasoning": {"effort": "high"}}, {"reasoning_effort": "high"}),
    ({"max_tool_calls": 2}, {"max_tool_calls": 2}),
    ({"top_k": 5}, {"top_k": 5}),
    ({"seed": 7}, {"seed": 7}),
    ({"chat_template_kwargs": {"enable_thinking": True}},
     {"chat_template_kwargs": {"enable_thinking": True}}),
    ({"repetition_penalty": 1.1}, {"repetition_penalty": 1.1}),
]  # fmt: skip

KEPT_BY_LLMQ = [
    {"metadata": {"a": "b"}},
    {"store": False},
    {"stream_options": {"include_obfuscation": False}},
    {"client_metadata": {"app": "x"}},
]

REFUSED = [
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"truncation": "auto"}, "truncation"),
    ({"text": {"format": {"type": "text"}, "shout": True}}, "text.shout"),
    ({"reasoning": {"effort": "low", "budget": 9}}, "reasoning.budget"),
    ({"messages": [{"role": "user", "content": "x"}]}, "messages"),
]


@pytest.fixture
async def served(stack, upstream):  # type: ignore[no-untyped-def]
    model = unique("fields")
    api = await stack.api()
    worker = await stack.worker(
        model=[model], backend="openai", backend_url=f"{upstream.url}/v1", breaker_threshold=100
    )
    await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
    upstream.route(CHAT, openai_chat(["ok"]))
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        yield model, http, api


async def test_every_field_reaches_the_chat_upstream(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http, _api = served
    for extra, expected in REACHES_THE_UPSTREAM:
        sent = await http.post("/v1/responses", json={"model": model, "input": "hi", **extra})
        assert sent.status_code == 200, (extra, sent.text)
        body = upstream.last.json()
        for key, value in expected.items():
            if key == "messages":
                assert body[key][: len(value)] == value, extra
            else:
                assert body.get(key) == value, (extra, body)


async def test_fields_llmq_keeps_never_reach_the_upstream(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http, _api = served
    for extra in KEPT_BY_LLMQ:
        sent = await http.post("/v1/responses", json={"model": model, "input": "hi", **extra})
        assert sent.status_code == 200, (extra, sent.text)
        body = upstream.last.json()
        for key, value in extra.items():
            assert body.get(key) != value, (extra, body)
        for key in ("store", "previous_response_id", "conversation", "background"):
            assert key not in body
    echoed = (await http.post("/v1/responses", json={"model": model, "input": "hi",
                                                      "metadata": {"a": "b"}})).json()  # fmt: skip
    assert echoed["metadata"] == {"a": "b"}


async def test_fields_a_chat_backend_cannot_honour_are_400_naming_them(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, http, _api = served
    asked = len(upstream.received)
    for extra, param in REFUSED:
        sent = await http.post("/v1/responses", json={"model": model, "input": "hi", **extra})
        assert sent.status_code == 400, (extra, sent.text)
        assert sent.json()["error"]["param"] == param
    assert len(upstream.received) == asked


def reasoning_reply() -> Reply:
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"reasoning_content": "The user wants "}),
        openai_chunk({"reasoning_content": "a greeting."}),
        openai_chunk({"content": "Hello!"}),
        openai_chunk({}, "stop"),
    ]
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


def dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.model_dump(mode="json", exclude_unset=True)
    return out


async def test_reasoning_summary_parts_through_the_sdk(served, upstream) -> None:  # type: ignore[no-untyped-def]
    model, _http, api = served
    upstream.route(CHAT, reasoning_reply())
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    stream = await client.responses.create(
        model=model, input="hi", reasoning={"effort": "low", "summary": "auto"}, stream=True
    )
    events = [e async for e in stream]
    for event in events:
        assert_valid("ResponseStreamEvent", dump(event))
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == "The user wants a greeting."
    assert any(e.type == "response.reasoning_summary_part.added" for e in events)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == "The user wants a greeting."
    stored = await client.responses.retrieve(final.id)
    assert stored.output[0].summary[0].text == "The user wants a greeting."  # type: ignore[union-attr]
    plain = await client.responses.create(model=model, input="hi")  # no summary asked for
    assert plain.output[0].type == "reasoning" and plain.output[0].summary == []
    assert plain.output[0].content[0].text == "The user wants a greeting."  # type: ignore[union-attr, index]
    await client.close()
