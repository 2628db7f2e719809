"""Whole OpenAI responses for non-streamed requests: built from a backend's own values as it
makes them (`ChatWhole`, `TextWhole`: no chunk is encoded), folded from chunks a backend
relayed (`Fold`), and the embedding list."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from llmq.schemas.openai import (
    ChatCompletion,
    Choice,
    EmbeddingData,
    EmbeddingList,
    EmbeddingUsage,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    Usage,
)
from llmq.worker.backends.base import Embeddings, ReplyTo

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


class _Parts:
    """One choice of a whole reply, as the backend produced it."""

    __slots__ = ("content", "finish_reason", "reasoning", "refusal", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tool_calls: list[dict[str, Any]] | None = None
        self.finish_reason: str | None = None


class ChatWhole:
    """A `chat.completion` built from the values a translating backend (or echo) yields,
    choice by choice (`index`), so a non-streamed reply costs no chunk encode or decode. It
    says what `Fold` would say of the same chunks: strings concatenated, tool calls merged,
    `refusal` always present (null when none), a choice without output has content ""."""

    __slots__ = ("_choices", "_reply")

    def __init__(self, reply: ReplyTo) -> None:
        self._reply = reply
        self._choices: dict[int, _Parts] = {}

    def add(
        self,
        index: int,
        content: str | None,
        reasoning: str | None,
        refusal: str | None,
        tool_calls: list[dict[str, Any]] | None,
    ) -> None:
        parts = self._choices.get(index)
        if parts is None:
            parts = self._choices[index] = _Parts()
        if content is not None:
            if parts.content is None:
                parts.content = [content]
            else:
                parts.content.append(content)
        if reasoning is not None:
            parts.reasoning = [*(parts.reasoning or ()), reasoning]
        if refusal is not None:
            parts.refusal = [*(parts.refusal or ()), refusal]
        if tool_calls:
            if parts.tool_calls is None:
                parts.tool_calls = []
            merge_tool_calls(parts.tool_calls, tool_calls)

    def finish(self, index: int, reason: str) -> None:
        parts = self._choices.get(index)
        if parts is None:  # a choice that produced nothing still says so
            parts = self._choices[index] = _Parts()
            parts.content = [""]
        parts.finish_reason = reason

    def body(self, usage: Usage) -> bytes:
        parts = self._choices
        if len(parts) > 1:
            choices = [_message_choice(i, parts[i]) for i in sorted(parts)]
        elif parts:  # the common case: one choice
            ((index, only),) = parts.items()
            choices = [_message_choice(index, only)]
        else:
            choices = [_message_choice(0, _Parts())]
        reply = self._reply
        whole = ChatCompletion(reply.id, reply.created, reply.model, choices, usage)
        return _encoder.encode(whole)


def _message_choice(index: int, parts: _Parts) -> Choice:
    message = ResponseMessage()
    if parts.content is not None:
        message.content = "".join(parts.content)
    if parts.refusal is not None:
        message.refusal = "".join(parts.refusal)
    if parts.reasoning is not None:
        message.reasoning_content = "".join(parts.reasoning)
    if parts.tool_calls:
        message.tool_calls = parts.tool_calls
        if not message.content:
            message.content = None
    return Choice(index=index, message=message, finish_reason=parts.finish_reason or "stop")


class TextWhole:
    """A `text_completion` built from the texts a backend yields (same methods as ChatWhole)."""

    __slots__ = ("_choices", "_reply")

    def __init__(self, reply: ReplyTo) -> None:
        self._reply = reply
        self._choices: dict[int, _Parts] = {}

    def add(self, index: int, content: str | None, *_: Any) -> None:
        parts = self._choices.get(index)
        if parts is None:
            parts = self._choices[index] = _Parts()
            parts.content = []
        if content:
            assert parts.content is not None
            parts.content.append(content)

    def finish(self, index: int, reason: str) -> None:
        self.add(index, None)
        self._choices[index].finish_reason = reason

    def body(self, usage: Usage) -> bytes:
        choices = [
            TextChoice(
                index=i,
                text="".join(parts.content or ()),
                finish_reason=parts.finish_reason or "stop",
            )
            for i, parts in sorted(self._choices.items())
        ]
        reply = self._reply
        whole = TextCompletion(
            id=reply.id,
            created=reply.created,
            model=reply.model,
            choices=choices or [TextChoice(index=0, text="", finish_reason="stop")],
            usage=usage,
        )
        return _encoder.encode(whole)


class Fold:
    """The whole body of a non-streamed request, folded from the chunks a backend made.

    Generic over what a chunk holds, so no field the upstream sent is lost: per choice (by
    `index`) strings are concatenated (content, reasoning, refusal, text), lists extended
    (logprobs), tool-call deltas merged, other values kept last-wins; top-level fields other
    than id, model, created and object (system_fingerprint, service_tier, ...) are kept.
    """

    def __init__(self, reply: ReplyTo, text: bool) -> None:
        self._reply = reply
        self._text = text
        self._extra: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: bytes) -> None:
        if not self._text:
            try:  # the common chunk (role, content, finish), typed; anything more: generic
                plain = _plain_decoder.decode(chunk)
            except msgspec.ValidationError:
                pass
            else:
                for choice in plain.choices:
                    self._plain(choice)
                return
        data = _object_decoder.decode(chunk)
        for key, value in data.items():
            if key == "choices":
                for choice in value or ():
                    self._choice(choice)
            elif key not in _OWN_FIELDS and value is not None:
                self._extra[key] = value

    def _choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index") or 0)
        folded = self._choices.get(index)
        if folded is None:
            folded = self._choices[index] = self._empty(index)
        for key, value in choice.items():
            if key == "delta":
                _merge_message(folded["message"], value or {})
            elif key != "index":
                _merge(folded, key, value)

    def _plain(self, choice: _PlainChoice) -> None:
        folded = self._choices.get(choice.index)
        if folded is None:
            folded = self._choices[choice.index] = self._empty(choice.index)
        content = choice.delta.content
        if content is not None:
            message = folded["message"]
            message["content"] = (message["content"] or "") + content
        if choice.finish_reason is not None:
            folded["finish_reason"] = choice.finish_reason

    def _empty(self, index: int) -> dict[str, Any]:
        if self._text:
            return {"index": index, "text": "", "logprobs": None, "finish_reason": None}
        message = {"role": "assistant", "content": None, "refusal": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": None}

    def whole(self, usage: Usage) -> bytes:
        choices = [self._choices[i] for i in sorted(self._choices)] or [self._empty(0)]
        for choice in choices:
            if choice["finish_reason"] is None:
                choice["finish_reason"] = "stop"
            message = choice.get("message")
            if message is not None and message.get("tool_calls") and not message["content"]:
                message["content"] = None
        reply = self._reply
        body: dict[str, Any] = {
            "id": reply.id,
            "object": "text_completion" if self._text else "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": choices,
            "usage": usage,
        }
        body.update(self._extra)
        return _encoder.encode(body)


class _PlainDelta(Struct, forbid_unknown_fields=True):
    role: str | None = None
    content: str | None = None


class _PlainChoice(Struct, forbid_unknown_fields=True):
    delta: _PlainDelta
    index: int = 0
    finish_reason: str | None = None
    logprobs: None = None


class _PlainChunk(Struct, forbid_unknown_fields=True):
    """A chunk with nothing but id, model, text and finish: what echo and most answers send.
    Any other field (logprobs, reasoning, tool calls, system_fingerprint, ...) fails this
    decode and takes the generic path."""

    choices: list[_PlainChoice]
    id: str = ""
    object: str = ""
    created: int = 0
    model: str = ""
    usage: Any = None


_plain_decoder = msgspec.json.Decoder(_PlainChunk)
_OWN_FIELDS = frozenset({"id", "object", "created", "model", "usage", "obfuscation"})
_object_decoder = msgspec.json.Decoder(dict[str, Any])


def _merge_message(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if key == "tool_calls":
            if value:
                merge_tool_calls(message.setdefault("tool_calls", []), value)
        elif key == "role":
            if value:
                message["role"] = value
        else:
            _merge(message, key, value)


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """Fold one streamed value into the whole: strings concatenate, lists extend, objects
    merge, anything else replaces; a null never erases what came before."""
    if value is None:
        return
    current = target.get(key)
    if isinstance(value, str) and isinstance(current, str):
        target[key] = current + value
    elif isinstance(value, list) and isinstance(current, list):
        current.extend(value)
    elif isinstance(value, dict) and isinstance(current, dict):
        for inner, item in value.items():
            _merge(current, inner, item)
    else:
        target[key] = value


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
