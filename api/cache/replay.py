"""A stored answer served in the shape the client asked for.

Same shape, for every kind: the stream's frames as they were relayed (SSE; named events for
the Responses and Messages APIs), or the JSON body. Across shapes, for chat and completions:
a whole answer becomes one chunk per choice, a finish chunk and a usage chunk; a stream
becomes one body (content and tool calls joined per choice). A Responses stream gives its
whole answer (the terminal event's `response`). Any other change of shape (a whole
Responses or Messages answer asked for as a stream, a Messages stream as a body) is a miss.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.responses import Response

from llmq.api.cache.store import Entry
from llmq.api.sse import DONE, SSEResponse, event, named_event
from llmq.schemas.frames import CHUNK_SEPARATOR

_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class _Typed(msgspec.Struct):
    type: str = ""


_typed = msgspec.json.Decoder(_Typed)


def _type(event: bytes) -> bytes:
    try:
        return _typed.decode(event).type.encode() or b"message"
    except msgspec.DecodeError:
        return b"message"


NAMED_EVENTS = frozenset({"response", "message"})
"""Kinds whose streams name every event (`event: <type>`) and end without `[DONE]`: the
Responses API and Anthropic's Messages API."""
CONVERTIBLE = frozenset({"chat", "completion"})
"""Kinds replayed across shapes both ways (a Responses stream also gives its body)."""


def can_replay(entry: Entry, kind: str, stream: bool) -> bool:
    if entry.kind != kind:
        return False
    if entry.stream == stream or kind in CONVERTIBLE:
        return True
    return kind == "response" and entry.stream


def replay(entry: Entry, stream: bool, usage: bool, headers: dict[str, str]) -> Response:
    """`usage`: a stream's client asked for the usage chunk (`stream_options`)."""
    if stream:
        frames = entry.frames if entry.stream else _as_chunks(entry)
        if entry.kind in CONVERTIBLE:
            frames = _with_usage(frames, entry, usage)
        return SSEResponse(_sse(entry.kind, frames), headers)
    body = entry.body if not entry.stream else _as_body(entry)
    return Response(body, media_type="application/json", headers=headers)


async def _sse(kind: str, frames: list[bytes]) -> AsyncIterator[bytes]:
    if kind in NAMED_EVENTS:  # a frame may hold several events (`Llmq-Chunks`)
        for frame in frames:
            yield b"".join(named_event(_type(part), part) for part in frame.split(CHUNK_SEPARATOR))
        return
    for frame in frames:
        yield event(frame)
    yield DONE


def _with_usage(frames: list[bytes], entry: Entry, wanted: bool) -> list[bytes]:
    """The stream's last usage-only chunk as the client asked: dropped, kept or made."""
    last = _decoder.decode(frames[-1].split(CHUNK_SEPARATOR)[-1]) if frames else {}
    has = not last.get("choices") and last.get("usage") is not None
    if has and not wanted:
        parts = frames[-1].split(CHUNK_SEPARATOR)[:-1]
        return [*frames[:-1], CHUNK_SEPARATOR.join(parts)] if parts else frames[:-1]
    if wanted and not has and frames:
        first = _decoder.decode(frames[0].split(CHUNK_SEPARATOR)[0])
        usage = {
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
            "total_tokens": entry.prompt_tokens + entry.completion_tokens,
        }
        keep = ("id", "object", "created", "model", "system_fingerprint")
        made = {k: first[k] for k in keep if k in first}
        return [*frames, _encoder.encode({**made, "choices": [], "usage": usage})]
    return frames


def _split(frames: list[bytes]) -> list[dict[str, Any]]:
    return [_decoder.decode(part) for f in frames for part in f.split(CHUNK_SEPARATOR)]


def _as_body(entry: Entry) -> bytes:
    """A stream as one whole answer."""
    if entry.kind == "response":
        for frame in reversed(entry.frames):
            decoded = _decoder.decode(frame)
            if decoded.get("type", "").encode() in TERMINAL:
                return _encoder.encode(decoded.get("response", {}))
        return b"{}"
    chunks = _split(entry.frames)
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices") or []:
            _fold(choices.setdefault(c.get("index", 0), {"index": c.get("index", 0)}), c, entry)
    whole = {
        "id": first.get("id", ""),
        "object": "chat.completion" if entry.kind == "chat" else "text_completion",
        "created": first.get("created", int(entry.created)),
        "model": first.get("model", entry.model),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if first.get("system_fingerprint"):
        whole["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        whole["usage"] = usage
    return _encoder.encode(whole)


def _fold(into: dict[str, Any], choice: dict[str, Any], entry: Entry) -> None:
    """One chunk's choice into the whole answer's choice."""
    if choice.get("finish_reason"):
        into["finish_reason"] = choice["finish_reason"]
    into.setdefault("finish_reason", "stop")
    if entry.kind != "chat":
        into["text"] = into.get("text", "") + (choice.get("text") or "")
        into.setdefault("logprobs", None)
        return
    into.setdefault("logprobs", None)
    message = into.setdefault("message", {"role": "assistant", "content": None, "refusal": None})
    delta = choice.get("delta") or {}
    if delta.get("content") is not None:
        message["content"] = (message["content"] or "") + delta["content"]
    if delta.get("refusal") is not None:
        message["refusal"] = (message.get("refusal") or "") + delta["refusal"]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        at = call.get("index", 0)
        while len(calls) <= at:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        kept, function = calls[at], call.get("function") or {}
        kept["id"] = call.get("id") or kept["id"]
        kept["function"]["name"] += function.get("name") or ""
        kept["function"]["arguments"] += function.get("arguments") or ""


def _as_chunks(entry: Entry) -> list[bytes]:
    """A whole chat or completion answer as stream chunks."""
    whole = _decoder.decode(entry.body)
    base = {
        "id": whole.get("id", ""),
        "object": "chat.completion.chunk" if entry.kind == "chat" else "text_completion",
        "created": whole.get("created", int(entry.created)),
        "model": whole.get("model", entry.model),
    }
    if whole.get("system_fingerprint"):
        base["system_fingerprint"] = whole["system_fingerprint"]
    chunks: list[bytes] = []
    for choice in whole.get("choices") or []:
        index = choice.get("index", 0)
        if entry.kind == "chat":
            message = dict(choice.get("message") or {})
            for call_at, call in enumerate(message.get("tool_calls") or []):
                call["index"] = call_at
            delta = {k: v for k, v in message.items() if v is not None}
            part: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
            end: dict[str, Any] = {"index": index, "delta": {}}
        else:
            part = {
                "index": index,
                "text": choice.get("text", ""),
                "finish_reason": None,
                "logprobs": None,
            }
            end = {"index": index, "text": "", "logprobs": None}
        end["finish_reason"] = choice.get("finish_reason") or "stop"
        chunks.append(_encoder.encode({**base, "choices": [part]}))
        chunks.append(_encoder.encode({**base, "choices": [end]}))
    if whole.get("usage") is not None:
        chunks.append(_encoder.encode({**base, "choices": [], "usage": whole["usage"]}))
    return chunks
