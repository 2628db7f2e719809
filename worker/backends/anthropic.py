"""Anthropic's Messages API (`POST {url}/v1/messages`), streamed, behind the OpenAI shape.

The request is translated (system and developer messages into `system`, tool calls and
results into content blocks, `stop` into `stop_sequences`, a `max_tokens` that Anthropic
requires) and the event stream is read back into pieces, tool_use blocks becoming OpenAI
tool-call deltas. Chat only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import JobKind
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Message
from llmq.schemas.text import message_text, prompt_tokens
from llmq.worker.backends.base import (
    AnthropicOptions,
    BackendConfig,
    BackendError,
    Embeddings,
    Piece,
    unsupported,
)
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, stream_error
from llmq.worker.upstream.sse import SSEDecoder
from llmq.worker.upstream.usage import Tally

API_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error"})
"""Error events worth another attempt when nothing was streamed yet."""


class _Usage(Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Info(Struct):
    usage: _Usage | None = None


class _Stop(Struct):
    stop_reason: str | None = None


class _MessageStart(Struct, tag="message_start", tag_field="type"):
    message: _Info


class _BlockStart(Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: dict[str, Any]


class _BlockDelta(Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: dict[str, Any]


class _BlockStop(Struct, tag="content_block_stop", tag_field="type"):
    index: int = 0


class _MessageDelta(Struct, tag="message_delta", tag_field="type"):
    delta: _Stop
    usage: _Usage | None = None


class _MessageStop(Struct, tag="message_stop", tag_field="type"):
    pass


class _Ping(Struct, tag="ping", tag_field="type"):
    pass


class _Error(Struct, tag="error", tag_field="type"):
    error: dict[str, Any]


_Event = (
    _MessageStart
    | _BlockStart
    | _BlockDelta
    | _BlockStop
    | _MessageDelta
    | _MessageStop
    | _Ping
    | _Error
)
KNOWN_EVENTS = frozenset(
    {
        "message",  # an event without an `event:` line: decode by its "type"
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)

_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_event_decoder = msgspec.json.Decoder(_Event)


class _EventStream:
    """Anthropic's SSE events until `message_stop`; unknown event types are skipped."""

    def __init__(self, tally: Tally) -> None:
        self.done = False
        self._sse = SSEDecoder()
        self._tally = tally
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._prompt: int | None = None
        self._output: int | None = None
        self._stop_reason: str | None = None

    def feed(self, line: str) -> list[Piece]:
        event = self._sse.feed(line)
        return self._event(*event) if event else []

    def eof(self) -> list[Piece]:
        event = self._sse.flush()
        pieces = self._event(*event) if event else []
        if not self.done:
            raise ended_early()
        return pieces

    def _event(self, name: str, data: str) -> list[Piece]:
        if name not in KNOWN_EVENTS:
            return []
        event = _event_decoder.decode(data)
        if isinstance(event, _BlockDelta):
            return self._delta(event)
        if isinstance(event, _BlockStart):
            return self._block(event)
        if isinstance(event, _MessageStart):
            self._count(event.message.usage)
        elif isinstance(event, _MessageDelta):
            self._stop_reason = event.delta.stop_reason or self._stop_reason
            self._count(event.usage)
        elif isinstance(event, _MessageStop):
            self.done = True
            finish = FINISH_REASONS.get(self._stop_reason or "end_turn", "stop")
            return [
                Piece(finish_reason=finish, usage=self._tally.usage(self._prompt, self._output))
            ]
        elif isinstance(event, _Error):
            kind = event.error.get("type")
            raise stream_error({"error": event.error}, retryable=kind in TRANSIENT_ERRORS)
        return []

    def _block(self, event: _BlockStart) -> list[Piece]:
        block = event.content_block
        if block.get("type") == "text" and block.get("text"):
            self._tally.add(block["text"])
            return [Piece(content=block["text"])]
        if block.get("type") != "tool_use":
            return []  # thinking, server tools, ...: not part of the OpenAI answer
        index = self._tools[event.index] = len(self._tools)
        call = {
            "index": index,
            "id": block.get("id", ""),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        return [Piece(tool_calls=[call])]

    def _delta(self, event: _BlockDelta) -> list[Piece]:
        delta = event.delta
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self._tally.add(delta["text"])
            return [Piece(content=delta["text"])]
        if kind == "input_json_delta" and event.index in self._tools and delta.get("partial_json"):
            self._tally.add(delta["partial_json"])
            call = {
                "index": self._tools[event.index],
                "function": {"arguments": delta["partial_json"]},
            }
            return [Piece(tool_calls=[call])]
        return []

    def _count(self, usage: _Usage | None) -> None:
        """Input counts arrive with message_start; output counts are cumulative."""
        if usage is None:
            return
        if usage.input_tokens is not None:
            self._prompt = (
                usage.input_tokens
                + (usage.cache_creation_input_tokens or 0)
                + (usage.cache_read_input_tokens or 0)
            )
        if usage.output_tokens is not None:
            self._output = usage.output_tokens


def _invalid(message: str) -> BackendError:
    return BackendError(message, status=400, type="invalid_request_error")


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) as Anthropic content blocks; empty text is dropped."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            raise _invalid(f"the anthropic backend does not support content parts of type {kind!r}")
    return blocks


def _image(image: Any) -> dict[str, Any]:
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[len("data:") :].split(";")[0]
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = _json_decoder.decode(arguments) if isinstance(arguments, str) else arguments
    except msgspec.DecodeError:
        raise _invalid("tool call arguments must be a JSON object") from None
    return {
        "type": "tool_use",
        "id": call.get("id", ""),
        "name": function.get("name", ""),
        "input": parsed if isinstance(parsed, dict) else {},
    }


def _messages(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, messages): same-role neighbours merged, tool results in user turns."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            text = message_text(message)
            if text:
                system.append(text)
            continue
        if message.role in ("tool", "function"):
            role = "user"
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message_text(message),
            }
            blocks = [result]
        elif message.role == "assistant":
            role = "assistant"
            blocks = _blocks(message.content) + [_tool_use(c) for c in message.tool_calls or ()]
        else:
            role = "user"
            blocks = _blocks(message.content)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool.get("function") or {}
        converted = {
            "name": function.get("name", ""),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        out.append(converted)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    converted: dict[str, Any] | None = None
    if choice == "auto":
        converted = {"type": "auto"}
    elif choice == "required":
        converted = {"type": "any"}
    elif choice == "none":
        converted = {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", "")
        converted = {"type": "tool", "name": name}
    if parallel is False:
        converted = converted or {"type": "auto"}
        if converted["type"] != "none":
            converted["disable_parallel_tool_use"] = True
    return converted


class AnthropicBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset({"chat"})

    def __init__(self, config: BackendConfig) -> None:
        self._base = base_url(config, "https://api.anthropic.com")
        auth = {"anthropic-version": API_VERSION}
        if config.api_key:
            auth["x-api-key"] = config.api_key
        self._upstream = Upstream(config, auth, self._base)
        self._default_max_tokens = config.options_of(AnthropicOptions).default_max_tokens

    def __repr__(self) -> str:
        return f"AnthropicBackend(url={self._base!r})"

    def _body(self, request: ChatCompletionRequest, upstream_model: str) -> bytes:
        system, messages = _messages(request.messages)
        limit = request.token_limit()
        body: dict[str, Any] = {
            "model": upstream_model,
            "max_tokens": limit if limit is not None else self._default_max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if isinstance(request.temperature, float | int):
            body["temperature"] = request.temperature
        if isinstance(request.top_p, float | int):
            body["top_p"] = request.top_p
        if isinstance(request.stop, str):
            body["stop_sequences"] = [request.stop]
        elif isinstance(request.stop, list) and request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = _tools(request.tools)
        tool_choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        if tool_choice is not None and request.tools:
            body["tool_choice"] = tool_choice
        if isinstance(request.user, str) and request.user:
            body["metadata"] = {"user_id": request.user}
        return _encoder.encode(body)

    def chat(self, request: ChatCompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        tally = Tally(lambda: prompt_tokens(request.messages))
        return self._upstream.stream(
            f"{self._base}/v1/messages",
            lambda: self._body(request, upstream_model),
            _EventStream(tally),
        )

    def complete(self, request: CompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        raise unsupported("completion", "anthropic")

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        raise unsupported("embedding", "anthropic")

    async def probe(self) -> bool:
        return await self._upstream.probe(f"{self._base}/v1/models")

    async def aclose(self) -> None:
        await self._upstream.aclose()
