"""OpenAI chat chunks folded into Anthropic Messages stream events and the whole Message.

One `MessageEvents` per job. `start` gives `message_start` and a `ping`; `feed` turns one
chat chunk (choice 0; a Messages reply has one) into the events it stands for — reasoning
→ a `thinking` block, content → a `text` block, each tool call → a `tool_use` block with
`input_json_delta`s — opening and closing blocks as the kind of output changes; `finish`
closes the last block and gives `message_delta` (stop reason, usage) and `message_stop`.
`message` is the whole Message the events add up to (the reply of a request that does not
stream). Pure: no I/O.

On the hot path (a streamed reply, one call per chunk) a chunk is decoded into the few typed
fields read here, and each event is made as its JSON bytes: the frequent ones (text and
thinking deltas, a block's stop, `ping`, `message_stop`) from pre-encoded pieces, byte for
byte what encoding their object gives.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from llmq.schemas.openai import Usage
from llmq.schemas.usage import cache_counts

STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""Chat finish reasons → Anthropic stop reasons (an unknown one: `end_turn`)."""

Event = bytes
"""One event's JSON, as the client gets it after `data: `."""
_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
_START: Final = (
    b'{"type":"message_start","message":{"id":%b,"type":"message","role":"assistant",'
    b'"model":%b,"content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":0,"output_tokens":0}}}'
)
_PING: Final = b'{"type":"ping"}'
_STOP: Final = b'{"type":"message_stop"}'
_BLOCK_STOP: Final = b'{"type":"content_block_stop","index":'
_BLOCK_DELTA: Final = b'{"type":"content_block_delta","index":'
_DELTA: Final = {
    "text": b',"delta":{"type":"text_delta","text":',
    "thinking": b',"delta":{"type":"thinking_delta","thinking":',
}
_MESSAGE_DELTA: Final = (
    b'{"type":"message_delta","delta":{"stop_reason":"%b","stop_sequence":null},'
    b'"usage":{"input_tokens":%d,"output_tokens":%d,"cache_creation_input_tokens":%d,'
    b'"cache_read_input_tokens":%d}}'
)


class _Delta(msgspec.Struct, gc=False):
    """The fields of a chunk's delta read here (loosely typed: a value of another type is
    passed over, as the backend's chunk is not checked)."""

    content: Any = None
    reasoning_content: Any = None
    reasoning: Any = None
    tool_calls: Any = None


class _Choice(msgspec.Struct, gc=False):
    index: Any = 0
    delta: _Delta | None = None
    finish_reason: Any = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


def message_usage(usage: Usage) -> dict[str, int]:
    """A chat usage in Anthropic's terms: `input_tokens` without the cache reads and writes,
    which have their own counts."""
    cached, written = cache_counts(usage)
    return {
        "input_tokens": max(usage.prompt_tokens - cached - written, 0),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


class MessageEvents:
    def __init__(self, message_id: str, model: str) -> None:
        self.message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self._open: int | None = None
        """Index of the open content block, if any."""
        self._kind = ""
        """Its type: text, thinking or tool_use."""
        self._tools: dict[int, int] = {}
        """Chat tool call index → content block index."""
        self._arguments: dict[int, list[str]] = {}
        """Content block index → the JSON text of a tool call's input so far."""
        self._texts: dict[int, list[str]] = {}
        """Content block index → the text (or thinking) so far, joined once at the end."""
        self._delta = b""
        """The head of the open text or thinking block's deltas, up to the text."""
        self._parts: list[str] = []
        """The open text or thinking block's parts (its list in `_texts`)."""
        self.finish_reason: str | None = None

    def start(self) -> list[Event]:
        message = self.message
        head = _START % (_encoder.encode(message["id"]), _encoder.encode(message["model"]))
        return [head, _PING]

    def feed(self, chunk: bytes) -> list[Event]:
        """The events of one chat chunk (its JSON, as the backend gave it)."""
        events: list[Event] = []
        for choice in _chunk_decoder.decode(chunk).choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning and isinstance(reasoning, str):
                    self._text("thinking", reasoning, events)
                content = delta.content
                if content and isinstance(content, str):
                    if self._kind == "text":  # the open text block goes on (the usual chunk)
                        self._parts.append(content)
                        events.append(self._delta + _encoder.encode(content) + b"}}")
                    else:
                        self._text("text", content, events)
                for call in delta.tool_calls or ():
                    events += self._tool(call)
            if choice.finish_reason and isinstance(choice.finish_reason, str):
                self.finish_reason = choice.finish_reason
        return events

    def output_text(self) -> str:
        """The text blocks so far (thinking and tool input left out), for the worker's own
        count of a reply whose backend reported no usage."""
        parts: list[str] = []
        for index, block in enumerate(self.message["content"]):
            if block["type"] == "text":
                parts += self._texts.get(index) or [block["text"]]
        return "".join(parts)

    def whole(self, completion: dict[str, Any]) -> None:
        """A whole chat completion (choice 0) as the Message's content, without events."""
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        content = self.message["content"]
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if isinstance(message.get("content"), str) and message["content"]:
            content.append({"type": "text", "text": message["content"]})
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{position}",
                    "name": function.get("name") or "",
                    "input": {},
                }
            )
            self._arguments[len(content) - 1] = [function.get("arguments") or ""]
        self.finish_reason = choices[0].get("finish_reason")

    def finish(self, usage: Usage) -> list[Event]:
        events = self._close()
        stop = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        counts = message_usage(usage)
        self.message["stop_reason"] = stop
        self.message["usage"] = counts
        content = self.message["content"]
        for index, parts in self._arguments.items():
            content[index]["input"] = _input("".join(parts))
        for index, parts in self._texts.items():
            content[index][content[index]["type"]] = "".join(parts)
        events.append(
            _MESSAGE_DELTA
            % (
                stop.encode(),
                counts["input_tokens"],
                counts["output_tokens"],
                counts["cache_creation_input_tokens"],
                counts["cache_read_input_tokens"],
            )
        )
        events.append(_STOP)
        return events

    def _text(self, kind: str, text: str, events: list[Event]) -> None:
        """A text or thinking delta into `events` (after its block's start when it opens
        one)."""
        if self._kind != kind:
            events += self._begin(kind, _empty(kind))
            assert self._open is not None
            self._parts = self._texts[self._open] = []
            self._delta = _BLOCK_DELTA + str(self._open).encode() + _DELTA[kind]
        self._parts.append(text)
        events.append(self._delta + _encoder.encode(text) + b"}}")

    def _tool(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        position = call.get("index", 0)
        index = self._tools.get(position)
        if index is None:
            function = call.get("function") or {}
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{position}",
                "name": function.get("name") or "",
                "input": {},
            }
            events += self._begin("tool_use", block)
            index = self._tools[position] = len(self.message["content"]) - 1
            self._arguments[index] = []
        arguments = (call.get("function") or {}).get("arguments")
        if isinstance(arguments, str) and arguments:
            self._arguments[index].append(arguments)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            events.append(_encoder.encode(event))
        return events

    def _begin(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._open = len(self.message["content"])
        self._kind = kind
        self.message["content"].append(block)
        start = {k: ({} if k == "input" else v) for k, v in block.items()}
        if kind != "tool_use":
            start[kind] = ""
        event = {"type": "content_block_start", "index": self._open, "content_block": start}
        events.append(_encoder.encode(event))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open, self._kind = self._open, None, ""
        return [_BLOCK_STOP + str(index).encode() + b"}"]


def _empty(kind: str) -> dict[str, Any]:
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {"type": "text", "text": ""}


def _input(arguments: str) -> Any:
    """A tool call's arguments as the `input` object (an empty call: `{}`); text that is not
    a JSON object stays as it came, under `_raw`, rather than being lost."""
    if not arguments.strip():
        return {}
    try:
        value = _decoder.decode(arguments)
    except msgspec.DecodeError:
        return {"_raw": arguments}
    return value
