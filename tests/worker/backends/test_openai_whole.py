"""The openai backend when the client wants one body (`ReplyTo.whole`): one non-streamed
upstream call, its JSON body relayed with every field, patched only where the gateway must
(id, model, a null string field left out, a missing `refusal` added, usage counted when the
upstream sent none); failures keep their meaning; cancelling closes the upstream request.
Against a fake OpenAI-compatible server over real HTTP, with both HTTP clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, Message
from llmq.worker.backends.base import (
    BackendConfig,
    BackendError,
    Call,
    Out,
    ReplyTo,
    Timeouts,
)
from llmq.worker.backends.openai import OpenAIBackend
from tests.spec import assert_valid
from tests.stack import wait_for
from tests.worker.backends.fake_upstreams import (
    FAST,
    FakeUpstream,
    Reply,
    collect_outs,
    json_reply,
    openai_chat,
    openai_error,
)

CHAT = "/v1/chat/completions"
WHOLE = ReplyTo("chatcmpl-job", "public", 5, whole=True)
RAW = (
    b'{"model":"public","messages":[{"role":"user","content":"hi there"}],'
    b'"top_k": 40,"min_p":0.050,"stream_options":{"include_usage":true},"n":2}'
)

Make = Callable[..., OpenAIBackend]


@pytest.fixture(params=["fast", "httpx"])
def make(
    upstream: FakeUpstream, built: Callable[[BackendConfig], Any], request: pytest.FixtureRequest
) -> Make:
    def factory(timeouts: Timeouts = FAST) -> OpenAIBackend:
        config = BackendConfig(
            kind="openai",
            url=f"{upstream.url}/v1",
            timeouts=timeouts,
            http_client="httpx" if request.param == "httpx" else "auto",
        )
        backend = built(config)
        assert isinstance(backend, OpenAIBackend)
        return backend

    return factory


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="public", messages=[Message(role="user", content="hi there")], **fields
    )


def _upstream_body(**changes: Any) -> dict[str, Any]:
    """What a vLLM-like server answers: two choices, logprobs, reasoning, a refusal on one
    message only, usage details, a null system_fingerprint, fields llmq does not know."""
    logprobs = {"content": [{"token": "Yes", "logprob": -0.2, "bytes": [89, 101, 115],
                             "top_logprobs": []}], "refusal": None}  # fmt: skip
    body = {
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1731000000,
        "model": "served-model", "system_fingerprint": None, "service_tier": "default",
        "prompt_logprobs": None, "kv_transfer_params": {"x": 1},
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Yes",
                                     "reasoning_content": "Think.", "tool_calls": []},
             "logprobs": logprobs, "finish_reason": "stop", "stop_reason": None},
            {"index": 1, "message": {"role": "assistant", "content": None,
                                     "refusal": "No can do"},
             "logprobs": None, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    }  # fmt: skip
    return body | changes


async def _whole(backend: OpenAIBackend, call: Call) -> Out:
    outs = await collect_outs(backend.chat(call))
    assert len(outs) == 1 and not outs[0].chunk and outs[0].tokens
    return outs[0]


async def test_one_non_streamed_call_relays_every_field(upstream: FakeUpstream, make: Make) -> None:
    sent = _upstream_body()
    upstream.route(CHAT, json_reply(200, sent))
    out = await _whole(make(), Call(_chat(n=2), "served", RAW, WHOLE))
    # the request: only the model changes, stream_options (refused without a stream) goes
    assert upstream.last.body == (
        b'{"model":"served","messages":[{"role":"user","content":"hi there"}],'
        b'"top_k":40,"min_p":0.050,"n":2}'
    )
    body = json.loads(out.body)
    assert_valid("CreateChatCompletionResponse", body)
    assert (body["id"], body["model"]) == ("chatcmpl-job", "public")
    assert "system_fingerprint" not in body  # null from the upstream: left out
    expected = {k: v for k, v in sent.items() if k not in ("id", "model", "system_fingerprint")}
    expected["choices"][0]["message"]["refusal"] = None  # the spec requires it
    assert {k: v for k, v in body.items() if k not in ("id", "model")} == expected
    assert out.finish_reason == "stop"
    assert out.usage is not None and (out.usage.prompt_tokens, out.usage.total_tokens) == (9, 15)
    assert out.usage.cached_tokens == 4


async def test_a_body_the_spec_accepts_goes_through_unchanged_but_id_and_model(
    upstream: FakeUpstream, make: Make
) -> None:
    sent = _upstream_body(system_fingerprint="fp_1")
    sent["choices"][0]["message"]["refusal"] = None
    upstream.route(CHAT, json_reply(200, sent))
    out = await _whole(make(), Call(_chat(), "served", RAW, WHOLE))
    assert json.loads(out.body) == sent | {"id": "chatcmpl-job", "model": "public"}


async def test_usage_is_counted_when_the_upstream_sends_none(
    upstream: FakeUpstream, make: Make
) -> None:
    sent = _upstream_body()
    del sent["usage"]
    upstream.route(CHAT, json_reply(200, sent))
    out = await _whole(make(), Call(_chat(), "served", RAW, WHOLE))
    assert out.usage is not None
    # counted as a stream is: each choice's output joined ("YesThink.", "No can do")
    assert out.usage.completion_tokens == 4 and out.usage.prompt_tokens > 0
    body = json.loads(out.body)
    assert body["usage"]["completion_tokens"] == 4
    assert_valid("CreateChatCompletionResponse", body)


async def test_a_legacy_completion_is_relayed_whole(upstream: FakeUpstream, make: Make) -> None:
    sent = {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "Once upon", "logprobs": None,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}  # fmt: skip
    upstream.route("/v1/completions", json_reply(200, sent))
    request = CompletionRequest(model="public", prompt="Tell me")
    reply = ReplyTo("cmpl-job", "public", 5, whole=True)
    outs = await collect_outs(make().complete(Call.of(request, "served", reply)))
    body = json.loads(outs[-1].body)
    assert body == sent | {"id": "cmpl-job", "model": "public"}
    assert_valid("CreateCompletionResponse", body)
    assert outs[-1].finish_reason == "length"
    assert "stream" not in upstream.last.json()


async def test_a_scripted_stream_is_answered_whole_by_the_fake_as_openai_does(
    upstream: FakeUpstream, make: Make
) -> None:
    """The fake server answers a request without `stream` with one JSON body: the e2e tests
    that script streams serve non-streamed clients through this path."""
    upstream.route(CHAT, openai_chat(["Hel", "lo"], usage=(3, 2)))
    out = await _whole(make(), Call.of(_chat(), "served", WHOLE))
    body = json.loads(out.body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello",
                                             "refusal": None}  # fmt: skip
    assert_valid("CreateChatCompletionResponse", body)


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (json_reply(200, {"error": {"message": "boom", "type": "server_error"}}), 502,
         "server_error"),
        (Reply(chunks=[b'{"choices": [1'], chunked=False), 502, "upstream_malformed"),
        (openai_error(400, "bad top_k", param="top_k"), 400, None),
    ],
)  # fmt: skip
async def test_failures_keep_their_meaning(
    upstream: FakeUpstream, make: Make, reply: Reply, status: int, code: str | None
) -> None:
    upstream.route(CHAT, reply)
    with pytest.raises(BackendError) as raised:
        await collect_outs(make().chat(Call.of(_chat(), "served", WHOLE)))
    assert raised.value.status == status
    if code is not None:
        assert raised.value.code == code


async def test_an_overloaded_upstream_is_retryable(upstream: FakeUpstream, make: Make) -> None:
    upstream.route(CHAT, openai_error(503, "overloaded", type="server_error"))
    with pytest.raises(BackendError) as raised:
        await collect_outs(make().chat(Call.of(_chat(), "served", WHOLE)))
    assert raised.value.status in (502, 503) and raised.value.retryable


async def test_the_total_timeout_bounds_a_whole_call(upstream: FakeUpstream, make: Make) -> None:
    slow = json_reply(200, _upstream_body())
    slow.delay = 3.0
    upstream.route(CHAT, slow)
    backend = make(Timeouts(connect=1.0, first_token=0.2, between_tokens=0.2, total=0.6))
    with pytest.raises(BackendError) as raised:
        await collect_outs(backend.chat(Call.of(_chat(), "served", WHOLE)))
    assert raised.value.status == 504 and "longer than 0.6s" in raised.value.message


async def test_cancelling_closes_the_upstream_request(upstream: FakeUpstream, make: Make) -> None:
    upstream.route(CHAT, Reply(hang_after=0))  # headers, then nothing until the client leaves
    task = asyncio.create_task(collect_outs(make().chat(Call.of(_chat(), "served", WHOLE))))
    await wait_for(lambda: bool(upstream.received), timeout=5)
    assert not upstream.disconnected.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(upstream.disconnected.wait(), 2.0)
