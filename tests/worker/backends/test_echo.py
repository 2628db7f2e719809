"""The built-in echo backend: deterministic words, max_tokens, usage, embeddings."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    Usage,
)
from llmq.schemas.text import count_tokens, message_text
from llmq.worker.backends import create_backend
from llmq.worker.backends.base import BackendConfig, Call, EchoOptions, ReplyTo
from llmq.worker.backends.echo import EMBEDDING_DIMENSIONS, EchoBackend
from llmq.worker.whole_replies import Fold
from tests.spec import assert_valid
from tests.worker.backends.fake_upstreams import Piece, collect, collect_outs


def chat(*messages: Message, max_tokens: int | None = None) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="echo", messages=list(messages), max_tokens=max_tokens)


async def test_chat_echoes_the_last_user_message_word_by_word() -> None:
    backend = create_backend(BackendConfig(kind="echo"))
    request = chat(
        Message(role="system", content="ignored here"),
        Message(role="user", content="first"),
        Message(role="assistant", content="reply"),
        Message(role="user", content="hello  big world"),
    )
    pieces = await collect(backend.chat(Call.of(request, "echo")))
    assert pieces == [
        Piece(content="hello"),
        Piece(content=" big"),
        Piece(content=" world"),
        Piece(finish_reason="stop", usage=Usage(7, 3, 10)),
    ]


async def test_max_tokens_cuts_with_finish_length() -> None:
    pieces = await collect(
        EchoBackend(BackendConfig()).chat(
            Call.of(chat(Message(role="user", content="a b c d"), max_tokens=2), "echo")
        )
    )
    assert [p.content for p in pieces] == ["a", " b", None]
    assert pieces[-1] == Piece(finish_reason="length", usage=Usage(4, 2, 6))


async def test_no_user_message_gives_an_empty_answer() -> None:
    pieces = await collect(
        EchoBackend(BackendConfig()).chat(Call.of(chat(Message(role="system", content="s")), "e"))
    )
    assert pieces == [Piece(finish_reason="stop", usage=Usage(1, 0, 1))]


async def test_complete_echoes_the_prompt() -> None:
    request = CompletionRequest(model="echo", prompt="one two three", max_tokens=5)
    pieces = await collect(EchoBackend(BackendConfig()).complete(Call.of(request, "echo")))
    assert "".join(p.content or "" for p in pieces) == "one two three"
    assert pieces[-1].usage == Usage(3, 3, 6)


async def test_embeddings_are_deterministic_and_sized() -> None:
    backend = EchoBackend(BackendConfig())
    first = await backend.embed(EmbeddingRequest(model="echo", input=["a b", "c"]), "echo")
    again = await backend.embed(EmbeddingRequest(model="echo", input="a b"), "echo")
    assert [len(v) for v in first.vectors] == [EMBEDDING_DIMENSIONS] * 2
    assert first.vectors[0] == again.vectors[0]
    assert first.vectors[0] != first.vectors[1]
    assert all(-1.0 <= x <= 1.0 for x in first.vectors[0])
    assert first.usage == Usage(3, 0, 3)


async def test_helpers_count_words_and_text_parts() -> None:
    assert count_tokens("  a  b\nc ") == 3
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert message_text(Message(role="user", content=parts)) == "a b"
    assert message_text(Message(role="assistant", content=None)) == ""


async def test_probe_and_aclose() -> None:
    backend = EchoBackend(BackendConfig())
    assert await backend.probe() is True
    await backend.aclose()


async def _fold_of_stream(request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The body the runner would fold from echo's stream chunks."""
    text = isinstance(request, CompletionRequest)
    reply = ReplyTo("x-1", "echo", 3)
    backend = EchoBackend(BackendConfig())
    call = Call.of(request, "echo", reply)
    outs = await collect_outs(backend.complete(call) if text else backend.chat(call))
    fold = Fold(reply, text)
    for out in outs:
        if out.chunk:
            fold.add(out.chunk)
    assert outs[-1].usage is not None
    return json.loads(fold.whole(outs[-1].usage))


@pytest.mark.parametrize(
    "request_",
    [
        ChatCompletionRequest(model="echo", messages=[Message(role="user", content="a b c")], n=2),
        ChatCompletionRequest(
            model="echo", messages=[Message(role="user", content="a b c")], max_tokens=2
        ),
        ChatCompletionRequest(model="echo", messages=[Message(role="system", content="s")]),
        CompletionRequest(model="echo", prompt="once upon a time", n=2),
    ],
)
async def test_a_whole_reply_is_one_step_with_the_streams_body(
    request_: ChatCompletionRequest | CompletionRequest,
) -> None:
    text = isinstance(request_, CompletionRequest)
    backend = EchoBackend(BackendConfig())
    call = Call.of(request_, "echo", ReplyTo("x-1", "echo", 3, whole=True))
    outs = await collect_outs(backend.complete(call) if text else backend.chat(call))
    (out,) = outs  # nothing to wait for between words: one step
    assert out.tokens == bool(json.loads(out.body)["usage"]["completion_tokens"])
    assert json.loads(out.body) == await _fold_of_stream(request_)
    assert_valid("CreateCompletionResponse" if text else "CreateChatCompletionResponse",
                 json.loads(out.body))  # fmt: skip


async def test_a_whole_reply_with_a_delay_still_takes_its_time() -> None:
    backend = EchoBackend(BackendConfig(options=EchoOptions(delay=0.05)))
    request = chat(Message(role="user", content="a b c"))
    started = time.monotonic()
    outs = await collect_outs(backend.chat(Call.of(request, "e", ReplyTo(whole=True))))
    assert time.monotonic() - started >= 0.14
    assert json.loads(outs[-1].body)["choices"][0]["message"]["content"] == "a b c"


def test_a_call_never_shows_its_prompt() -> None:
    call = Call.of(chat(Message(role="user", content="the secret prompt")), "echo")
    assert "secret" not in repr(call) and "secret" not in str(call)
