"""Anthropic's Messages API (`POST {url}/v1/messages`), streamed, behind the OpenAI shape.

The request is translated by `anthropic_request` (which refuses, by name, what it cannot
map) and the event stream is turned into OpenAI chunks: text, thinking as
`reasoning_content`, tool_use blocks as tool-call deltas, cache reads as
`usage.prompt_tokens_details.cached_tokens`. Chat only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import JobKind
from llmq.schemas.openai import ChatCompletionRequest, EmbeddingRequest, Usage
from llmq.schemas.text import prompt_tokens
from llmq.worker.backends import anthropic_request
from llmq.worker.backends.base import (
    AnthropicOptions,
    BackendConfig,
    Call,
    Embeddings,
    Out,
    unsupported,
)
from llmq.worker.chunks import ChatChunks
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
    """Anthropic's SSE events until `message_stop`, as OpenAI chunks of choice 0; unknown
    event types are skipped. Text → `content`, thinking → `reasoning_content`, tool_use →
    tool-call deltas; the input of the forced response_format tool → `content`."""

    def __init__(self, call: Call, tally: Tally) -> None:
        self.done = False
        self._sse = SSEDecoder()
        self._tally = tally
        self._chunks = ChatChunks(call.reply)
        self.format_tool: str | None = None
        """The forced tool that carries a response_format answer (set with the body)."""
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._answer: set[int] = set()  # content blocks that carry the response_format answer
        self._prompt: int | None = None
        self._cache_read = 0
        self._cache_write = 0
        self._output: int | None = None
        self._stop_reason: str | None = None

    def feed(self, line: str) -> list[Out]:
        event = self._sse.feed(line)
        return self._event(*event) if event else []

    def eof(self) -> list[Out]:
        event = self._sse.flush()
        outs = self._event(*event) if event else []
        if not self.done:
            raise ended_early()
        return outs

    def _event(self, name: str, data: str) -> list[Out]:
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
            if self._answer and finish == "tool_calls":
                finish = "stop"  # the forced tool was the answer, not a call to make
            return [self._chunks.finish(0, finish), self._chunks.end(self._usage(), finish)]
        elif isinstance(event, _Error):
            kind = event.error.get("type")
            raise stream_error({"error": event.error}, retryable=kind in TRANSIENT_ERRORS)
        return []

    def _text(self, text: str | None, reasoning: bool = False) -> list[Out]:
        if not text:
            return []
        self._tally.add(text)
        if reasoning:
            return [self._chunks.delta(reasoning=text)]
        return [self._chunks.delta(content=text)]

    def _block(self, event: _BlockStart) -> list[Out]:
        block = event.content_block
        kind = block.get("type")
        if kind == "text":
            return self._text(block.get("text"))
        if kind == "thinking":
            return self._text(block.get("thinking"), reasoning=True)
        if kind != "tool_use":
            return []  # redacted thinking, server tools: nothing an OpenAI client can read
        if self.format_tool is not None and block.get("name") == self.format_tool:
            self._answer.add(event.index)
            return []
        index = self._tools[event.index] = len(self._tools)
        call = {
            "index": index,
            "id": block.get("id", ""),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        return [self._chunks.delta(tool_calls=[call])]

    def _delta(self, event: _BlockDelta) -> list[Out]:
        delta = event.delta
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(delta.get("text"))
        if kind == "thinking_delta":
            return self._text(delta.get("thinking"), reasoning=True)
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return []
        if event.index in self._answer:
            return self._text(delta["partial_json"])
        if event.index in self._tools:
            self._tally.add(delta["partial_json"])
            call = {
                "index": self._tools[event.index],
                "function": {"arguments": delta["partial_json"]},
            }
            return [self._chunks.delta(tool_calls=[call])]
        return []

    def _count(self, usage: _Usage | None) -> None:
        """Input counts arrive with message_start; output counts are cumulative."""
        if usage is None:
            return
        if usage.cache_read_input_tokens is not None:
            self._cache_read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self._cache_write = usage.cache_creation_input_tokens
        if usage.input_tokens is not None:
            self._prompt = usage.input_tokens + self._cache_write + self._cache_read
        if usage.output_tokens is not None:
            self._output = usage.output_tokens

    def _usage(self) -> Usage:
        """Cache reads as OpenAI's `cached_tokens`; cache writes as `cache_creation_tokens`."""
        usage = self._tally.usage(self._prompt, self._output)
        if self._cache_read or self._cache_write:
            details: dict[str, Any] = {"cached_tokens": self._cache_read}
            if self._cache_write:
                details["cache_creation_tokens"] = self._cache_write
            usage.prompt_tokens_details = details
        return usage


class AnthropicBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset({"chat", "message"})

    def __init__(self, config: BackendConfig) -> None:
        self._base = base_url(config, "https://api.anthropic.com")
        auth = {"anthropic-version": API_VERSION}
        if config.api_key:
            auth["x-api-key"] = config.api_key
        self._upstream = Upstream(config, auth, self._base)
        self._default_max_tokens = config.options_of(AnthropicOptions).default_max_tokens

    def __repr__(self) -> str:
        return f"AnthropicBackend(url={self._base!r})"

    def chat(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, ChatCompletionRequest)
        tally = Tally(lambda: prompt_tokens(request.messages))
        events = _EventStream(call, tally)

        def body() -> bytes:  # built while iterating: a refused field fails like any error
            content, events.format_tool = anthropic_request.build(call, self._default_max_tokens)
            return content

        return self._upstream.stream(f"{self._base}/v1/messages", body, events)

    def complete(self, call: Call) -> AsyncIterator[Out]:
        raise unsupported("completion", "anthropic")

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        raise unsupported("embedding", "anthropic")

    async def probe(self) -> bool:
        return await self._upstream.probe(f"{self._base}/v1/models")

    async def aclose(self) -> None:
        await self._upstream.aclose()
