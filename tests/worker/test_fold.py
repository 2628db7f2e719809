"""The body of a non-streamed reply is folded from the same chunks a stream gets, losing
nothing: per-choice strings concatenate, logprobs extend, tool-call deltas merge, unknown
and top-level fields stay; a null never erases a value; the shape is the spec's."""

from __future__ import annotations

import json
from typing import Any

from llmq.schemas.openai import Usage
from llmq.worker.backends.base import ReplyTo
from llmq.worker.whole_replies import Fold
from tests.spec import assert_valid

REPLY = ReplyTo("chatcmpl-1", "public", 7, include_usage=True)


def _chunk(*choices: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"id": "up", "object": "chat.completion.chunk", "created": 1,
                       "model": "up", "choices": list(choices), **top}).encode()  # fmt: skip


def test_chat_chunks_fold_into_one_spec_valid_body() -> None:
    fold = Fold(REPLY, text=False)
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": '{"a"'}}  # fmt: skip
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    lp["refusal"] = None
    fold.add(_chunk({"index": 0, "delta": {"role": "assistant", "content": ""}},
                    {"index": 1, "delta": {"role": "assistant", "content": ""}},
                    system_fingerprint="fp_1", service_tier="default"))  # fmt: skip
    fold.add(_chunk({"index": 0, "delta": {"reasoning_content": "th"}, "logprobs": None}))
    fold.add(_chunk({"index": 0, "delta": {"reasoning_content": "ink", "content": "Hi"},
                     "logprobs": lp}))  # fmt: skip
    fold.add(_chunk({"index": 0, "delta": {"content": "!"}, "logprobs": lp}))
    fold.add(_chunk({"index": 1, "delta": {"tool_calls": [call]}}))
    fold.add(_chunk({"index": 1, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}}))  # fmt: skip
    fold.add(_chunk({"index": 0, "delta": {}, "finish_reason": "stop"},
                    {"index": 1, "delta": {}, "finish_reason": "tool_calls", "stop_reason": 7},
                    system_fingerprint=None))  # fmt: skip
    usage = Usage(5, 4, 9, {"cached_tokens": 2})
    body = json.loads(fold.whole(usage))
    assert_valid("CreateChatCompletionResponse", body)
    assert (body["id"], body["model"], body["created"]) == ("chatcmpl-1", "public", 7)
    assert body["system_fingerprint"] == "fp_1" and body["service_tier"] == "default"
    first, second = body["choices"]
    assert first["message"] == {
        "role": "assistant", "content": "Hi!", "refusal": None, "reasoning_content": "think"
    }  # fmt: skip
    assert [t["token"] for t in first["logprobs"]["content"]] == ["Hi", "Hi"]
    assert second["message"]["content"] is None
    assert second["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert (second["finish_reason"], second["stop_reason"]) == ("tool_calls", 7)
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}


def test_text_chunks_fold_into_a_completion() -> None:
    fold = Fold(ReplyTo("cmpl-1", "public", 7), text=True)
    for i, text in enumerate(["Once", " upon"]):
        fold.add(json.dumps({"id": "x", "object": "text_completion", "created": 1, "model": "x",
                             "choices": [{"index": i % 1, "text": text}]}).encode())  # fmt: skip
    body = json.loads(fold.whole(Usage(1, 2, 3)))
    assert_valid("CreateCompletionResponse", body)
    assert body["choices"] == [
        {"index": 0, "text": "Once upon", "logprobs": None, "finish_reason": "stop"}
    ]
