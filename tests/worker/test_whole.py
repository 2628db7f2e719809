"""A non-streamed reply built from a backend's own values (`ReplyTo.whole`: no chunk encoded)
says exactly what folding the chunks of the same reply says, and is spec-valid; the runner
uses it and folds only when a backend gave chunks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from llmq.schemas.openai import Usage
from llmq.worker.backends.base import Out, ReplyTo
from llmq.worker.chunks import ChatChunks, Chunks, TextChunks
from llmq.worker.whole_replies import Fold
from tests.spec import assert_valid

CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}}
MORE = {"index": 0, "function": {"arguments": '"a": 1}'}}

Script = Callable[[Chunks], list[Out]]


def _two_choices(c: Chunks) -> list[Out]:
    return [
        c.delta(0, reasoning="Th"), c.delta(0, reasoning="ink."), c.delta(0, content="Yes"),
        c.delta(1, refusal="No"), c.delta(0, content=", sure"), c.delta(1, refusal=" way"),
        c.finish(0, "stop"), c.finish(1, "stop"), c.end(Usage(5, 6, 11), "stop"),
    ]  # fmt: skip


def _tools(c: Chunks) -> list[Out]:
    return [c.delta(0, tool_calls=[CALL]), c.delta(0, tool_calls=[MORE]),
            c.finish(0, "tool_calls"), c.end(Usage(3, 4, 7), "tool_calls")]  # fmt: skip


def _text_and_tools(c: Chunks) -> list[Out]:
    return [c.delta(0, content="Let me look."), c.delta(0, tool_calls=[CALL]),
            c.finish(0, "tool_calls"), c.end(Usage(3, 4, 7), "tool_calls")]  # fmt: skip


def _silent_choice(c: Chunks) -> list[Out]:
    """Choice 1 ends without output (its content is "", as its finish chunk says)."""
    return [c.delta(0, content="a"), c.finish(0, "length"), c.finish(1, "length"),
            c.end(Usage(1, 1, 2), "length")]  # fmt: skip


def _nothing(c: Chunks) -> list[Out]:
    return [c.end(Usage(1, 0, 1), "stop")]


def _folded(chunks: Chunks, script: Script, reply: ReplyTo, text: bool) -> dict[str, Any]:
    fold = Fold(reply, text)
    outs = script(chunks)
    for out in outs:
        if out.chunk:
            fold.add(out.chunk)
    usage = outs[-1].usage
    assert usage is not None
    return json.loads(fold.whole(usage))


@pytest.mark.parametrize(
    "script", [_two_choices, _tools, _text_and_tools, _silent_choice, _nothing]
)
@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_whole_says_what_the_fold_of_its_chunks_says(
    script: Script, include_usage: bool
) -> None:
    streamed = ReplyTo("chatcmpl-1", "public", 7, include_usage)
    whole = ReplyTo("chatcmpl-1", "public", 7, include_usage, whole=True)
    outs = script(ChatChunks(whole))
    assert all(not out.chunk for out in outs)  # nothing encoded chunk by chunk
    assert outs[-1].usage is not None and outs[-1].body
    built = json.loads(outs[-1].body)
    assert built == _folded(ChatChunks(streamed), script, streamed, text=False)
    assert_valid("CreateChatCompletionResponse", built)
    assert all(c["message"]["refusal"] is None or c["message"]["refusal"] for c in built["choices"])


def test_two_choices_keep_every_value() -> None:
    outs = _two_choices(ChatChunks(ReplyTo("chatcmpl-1", "public", 7, whole=True)))
    body = json.loads(outs[-1].body)
    first, second = body["choices"]
    assert first["message"] == {"role": "assistant", "content": "Yes, sure", "refusal": None,
                                "reasoning_content": "Think."}  # fmt: skip
    assert second["message"]["refusal"] == "No way" and second["message"]["content"] is None
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    assert [out.tokens for out in outs] == [True] * 6 + [False] * 3


def _text(c: Chunks) -> list[Out]:
    return [c.delta(0, content="Once"), c.delta(1, content="Twice"), c.delta(0, content=" upon"),
            c.finish(0, "stop"), c.finish(1, "length"), c.end(Usage(2, 3, 5), "stop")]  # fmt: skip


@pytest.mark.parametrize("script", [_text, _nothing])
def test_text_whole_says_what_the_fold_of_its_chunks_says(script: Script) -> None:
    streamed = ReplyTo("cmpl-1", "public", 7)
    whole = ReplyTo("cmpl-1", "public", 7, whole=True)
    outs = script(TextChunks(whole))
    assert all(not out.chunk for out in outs)
    built = json.loads(outs[-1].body)
    assert built == _folded(TextChunks(streamed), script, streamed, text=True)
    assert_valid("CreateCompletionResponse", built)
