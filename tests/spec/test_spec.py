"""The spec check itself: it accepts OpenAI's own shapes and rejects what strict clients reject."""

from __future__ import annotations

from tests.spec import assert_valid, errors

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def test_a_valid_chat_completion_passes() -> None:
    assert_valid("CreateChatCompletionResponse", CHAT)


def test_a_null_where_the_spec_wants_a_string_fails() -> None:
    assert errors("CreateChatCompletionResponse", {**CHAT, "system_fingerprint": None})


def test_a_missing_required_field_fails() -> None:
    body = {k: v for k, v in CHAT.items() if k != "choices"}
    assert errors("CreateChatCompletionResponse", body)


def test_nullable_fields_accept_null_and_only_those() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    assert_valid("CreateChatCompletionStreamResponse", chunk)
    bad = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "nonsense"}]}
    assert errors("CreateChatCompletionStreamResponse", bad)
