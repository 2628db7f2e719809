"""OpenAI stream chunks for backends that translate another protocol (and echo).

One writer per reply: every chunk names the choice it belongs to (`index`), a choice's first
chunk carries its role, and the last `Out` carries the usage (sent to the client as a chunk
with no choices only when it asked for it). Each chunk costs one small struct and one
`encode` call with the module's encoder. When the runner wants a whole reply
(`ReplyTo.whole`), no chunk is made: the values go to `ChatWhole`/`TextWhole` and the last
Out carries the body.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmq.schemas.openai import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    TextChoice,
    TextCompletion,
    Usage,
)
from llmq.worker.backends.base import Out, ReplyTo
from llmq.worker.whole_replies import ChatWhole, TextWhole

_encoder = msgspec.json.Encoder()


class ChatChunks:
    """`chat.completion.chunk`s of one reply."""

    __slots__ = ("_reply", "_started", "_whole")

    def __init__(self, reply: ReplyTo) -> None:
        self._reply = reply
        self._started: set[int] = set()
        self._whole = ChatWhole(reply) if reply.whole else None

    def _encode(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        reply = self._reply
        chunk = ChatCompletionChunk(
            id=reply.id, created=reply.created, model=reply.model, choices=choices
        )
        if usage is not None:
            chunk.usage = usage
        return _encoder.encode(chunk)

    def _delta(self, index: int) -> Delta:
        if index in self._started:
            return Delta()
        self._started.add(index)
        return Delta(role="assistant")

    def delta(
        self,
        index: int = 0,
        *,
        content: str | None = None,
        reasoning: str | None = None,
        refusal: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> Out:
        """Generated output of choice `index`: text, reasoning, a refusal, tool-call deltas."""
        if self._whole is not None:
            self._whole.add(index, content, reasoning, refusal, tool_calls)
            return Out(tokens=True)
        delta = self._delta(index)
        if content is not None:
            delta.content = content
        if reasoning is not None:
            delta.reasoning_content = reasoning
        if refusal is not None:
            delta.refusal = refusal
        if tool_calls:
            delta.tool_calls = tool_calls
        return Out(self._encode([ChunkChoice(index=index, delta=delta)]), tokens=True)

    def finish(self, index: int, reason: str) -> Out:
        """Choice `index` ended (its role too, if it produced nothing)."""
        if self._whole is not None:
            self._whole.finish(index, reason)
            return Out()
        delta = self._delta(index)
        if delta.role == "assistant":
            delta.content = ""
        return Out(self._encode([ChunkChoice(index=index, delta=delta, finish_reason=reason)]))

    def end(self, usage: Usage, finish_reason: str) -> Out:
        """The last Out: a usage chunk if the client asked for one, and the accounting."""
        if self._whole is not None:
            return Out(usage=usage, finish_reason=finish_reason, body=self._whole.body(usage))
        chunk = self._encode([], usage) if self._reply.include_usage else b""
        return Out(chunk, usage=usage, finish_reason=finish_reason)


class TextChunks:
    """Legacy `text_completion` chunks of one reply (same methods as ChatChunks)."""

    __slots__ = ("_reply", "_whole")

    def __init__(self, reply: ReplyTo) -> None:
        self._reply = reply
        self._whole = TextWhole(reply) if reply.whole else None

    def _encode(self, choices: list[TextChoice], usage: Usage | None = None) -> bytes:
        reply = self._reply
        chunk = TextCompletion(
            id=reply.id, created=reply.created, model=reply.model, choices=choices
        )
        if usage is not None:
            chunk.usage = usage
        return _encoder.encode(chunk)

    def delta(self, index: int = 0, *, content: str | None = None, **_: Any) -> Out:
        if self._whole is not None:
            self._whole.add(index, content)
            return Out(tokens=True)
        return Out(self._encode([TextChoice(index=index, text=content or "")]), tokens=True)

    def finish(self, index: int, reason: str) -> Out:
        if self._whole is not None:
            self._whole.finish(index, reason)
            return Out()
        return Out(self._encode([TextChoice(index=index, text="", finish_reason=reason)]))

    def end(self, usage: Usage, finish_reason: str) -> Out:
        if self._whole is not None:
            return Out(usage=usage, finish_reason=finish_reason, body=self._whole.body(usage))
        chunk = self._encode([], usage) if self._reply.include_usage else b""
        return Out(chunk, usage=usage, finish_reason=finish_reason)


Chunks = ChatChunks | TextChunks
