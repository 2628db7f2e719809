"""Turning backend `Piece`s into OpenAI responses: stream chunks or one whole object.

Each builder encodes with one module-level msgspec encoder; a streamed token costs one
small struct and one `encode` call.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmq.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingData,
    EmbeddingList,
    EmbeddingUsage,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    Usage,
)
from llmq.worker.backends.base import Embeddings, Piece

_encoder = msgspec.json.Encoder()


def merge_tool_calls(merged: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Fold streamed tool-call deltas (keyed by `index`) into whole tool calls."""
    for delta in deltas:
        index = int(delta.get("index", len(merged)))
        while len(merged) <= index:
            merged.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = merged[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]


class ChatBuilder:
    """`chat.completion.chunk`s for a stream, or one `chat.completion` at the end."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.parts: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        return _encoder.encode(
            ChatCompletionChunk(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
            )
        )

    def first_chunk(self) -> bytes:
        return self._chunk(Delta(role="assistant", content=""))

    def piece_chunk(self, piece: Piece) -> bytes | None:
        if piece.content is None and not piece.tool_calls:
            return None
        delta = Delta(content=piece.content) if piece.content is not None else Delta()
        if piece.tool_calls:
            delta.tool_calls = piece.tool_calls
        return self._chunk(delta)

    def finish_chunk(self, finish_reason: str | None) -> bytes:
        return self._chunk(Delta(), finish_reason or "stop")

    def usage_chunk(self, usage: Usage) -> bytes:
        return _encoder.encode(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            )
        )

    def add(self, piece: Piece) -> None:
        if piece.content:
            self.parts.append(piece.content)
        if piece.tool_calls:
            merge_tool_calls(self.tool_calls, piece.tool_calls)

    def whole(self, finish_reason: str | None, usage: Usage) -> bytes:
        message = ResponseMessage(content="".join(self.parts))
        if self.tool_calls:
            message.tool_calls = self.tool_calls
            if not self.parts:
                message.content = None
        return _encoder.encode(
            ChatCompletion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[Choice(index=0, message=message, finish_reason=finish_reason or "stop")],
                usage=usage,
            )
        )


class TextBuilder:
    """Legacy `text_completion` objects, streamed or whole."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.parts: list[str] = []

    def _object(self, text: str, finish: str | None, usage: Usage | None = None) -> bytes:
        choices = [TextChoice(index=0, text=text, finish_reason=finish)]
        return _encoder.encode(
            TextCompletion(
                id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
            )
        )

    def first_chunk(self) -> bytes | None:
        return None

    def piece_chunk(self, piece: Piece) -> bytes | None:
        return self._object(piece.content, None) if piece.content else None

    def finish_chunk(self, finish_reason: str | None) -> bytes:
        return self._object("", finish_reason or "stop")

    def usage_chunk(self, usage: Usage) -> bytes:
        return _encoder.encode(
            TextCompletion(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            )
        )

    def add(self, piece: Piece) -> None:
        if piece.content:
            self.parts.append(piece.content)

    def whole(self, finish_reason: str | None, usage: Usage) -> bytes:
        return self._object("".join(self.parts), finish_reason or "stop", usage)


def embedding_list(result: Embeddings, model: str, base64: bool) -> bytes:
    data: list[EmbeddingData] = []
    for i, vector in enumerate(result.vectors):
        value: list[float] | str = vector
        if base64:
            import array
            import base64 as b64

            value = b64.b64encode(array.array("f", vector).tobytes()).decode()
        data.append(EmbeddingData(index=i, embedding=value))
    usage = EmbeddingUsage(result.usage.prompt_tokens, result.usage.prompt_tokens)
    return _encoder.encode(EmbeddingList(data=data, model=model, usage=usage))
