"""Fake OpenAI, Ollama and Anthropic servers over real HTTP, for the backend tests.

A small asyncio HTTP/1.1 server rather than a framework, so a test scripts exactly what goes
on the socket: status, headers, each protocol's own error bodies, chunk timing, a connection
dropped before or after the first token, a stream that stops and waits, and it records what
it received and when the client hung up. The payload builders copy the real wire formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from llmq.schemas.openai import Usage
from llmq.worker.backends.base import BackendError, Out, Timeouts

FAST = Timeouts(connect=1.0, first_token=3.0, between_tokens=3.0, total=10.0)
"""Backend timeouts for tests: generous for a loaded CI machine, short enough to fail fast."""

# --- the server ----------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the server does for one request."""

    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    """Body pieces, each sent as one HTTP chunk (or joined, with Content-Length)."""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = True
    delay: float = 0.0
    """Seconds before the status line."""
    gap: float = 0.0
    """Seconds between chunks."""
    drop_before_headers: bool = False
    drop_after: int | None = None
    """Close the socket after this many chunks, without ending the body."""
    hang_after: int | None = None
    """Stop after this many chunks and wait until the client goes away."""


class FakeUpstream:
    """`async with FakeUpstream() as server:` listens on 127.0.0.1, a free port."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.handlers: dict[str, Callable[[Received], Reply]] = {}
        """Replies that depend on the request (a conversation's next turn), by path."""
        self.received: list[Received] = []
        self.disconnected = asyncio.Event()
        """Set when a client closed a connection while a reply was hanging."""
        self.disconnected_at: float | None = None
        self.connections = 0
        """Connections accepted so far (to see that the client pools them)."""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def route(self, path: str, reply: Reply) -> None:
        self.routes[path] = reply

    def respond(self, path: str, handler: Callable[[Received], Reply]) -> None:
        """Answer `path` with what `handler` makes of each request."""
        self.handlers[path] = handler

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def last(self) -> Received:
        return self.received[-1]

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its reply; False when the connection is over."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        url = urlsplit(target)
        received = Received(method, url.path, dict(parse_qsl(url.query)), headers, body)
        self.received.append(received)
        handler = self.handlers.get(url.path)
        if handler is not None:
            return await self._reply(_as_asked(handler(received), body), reader, writer)
        reply = self.routes.get(url.path) or _not_found(url.path)
        return await self._reply(_as_asked(reply, body), reader, writer)

    async def _reply(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if reply.drop_before_headers:
            return False
        if reply.delay:
            await asyncio.sleep(reply.delay)
        head = [f"HTTP/1.1 {reply.status} {_phrase(reply.status)}"]
        head.append(f"content-type: {reply.content_type}")
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        if not reply.chunked:
            body = b"".join(reply.chunks)
            head.append(f"content-length: {len(body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            return True
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        for sent, chunk in enumerate(reply.chunks):
            if sent == reply.drop_after:
                return False
            if sent == reply.hang_after:
                await self._wait_for_hangup(reader)
                return False
            if sent and reply.gap:
                await asyncio.sleep(reply.gap)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        if reply.drop_after == len(reply.chunks):
            return False
        if reply.hang_after == len(reply.chunks):
            await self._wait_for_hangup(reader)
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _wait_for_hangup(self, reader: asyncio.StreamReader) -> None:
        # The client sends nothing while it reads a response, so any read ends at its close.
        await reader.read(1)
        self.disconnected_at = time.monotonic()
        self.disconnected.set()


def _as_asked(reply: Reply, body: bytes) -> Reply:
    """A scripted OpenAI stream answers a request that asked for no stream as OpenAI does:
    one JSON body with what the stream would have said (`whole_of`). A reply scripted to
    drop or hang is sent as it is."""
    scripted_failure = reply.drop_after is not None or reply.hang_after is not None
    if reply.content_type != "text/event-stream" or scripted_failure:
        return reply
    try:
        asked = json.loads(body)
    except ValueError:
        return reply
    if (
        not isinstance(asked, dict)
        or asked.get("stream")
        or not {"messages", "prompt"} & set(asked)
    ):
        return reply  # a streamed call, or not a chat or completion request
    whole = whole_of(reply.chunks)
    return Reply(
        status=reply.status, chunks=[_dumps(whole)], chunked=False, headers=reply.headers,
        delay=reply.delay,
    )  # fmt: skip


def whole_of(chunks: list[bytes]) -> dict[str, Any]:
    """What an OpenAI server answers without a stream, from the SSE events it would stream:
    per choice the deltas joined into a message (strings concatenated, tool calls merged by
    index, logprobs lists extended); top-level fields as the last chunk had them (a null
    kept only if no chunk had a value), the usage of the usage chunk. Written apart from the
    worker's own code on purpose: this is the upstream's side."""
    events = [json.loads(line[6:]) for part in chunks for line in part.decode().split("\n")
              if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    top: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    text = False
    for event in events:
        for key, value in event.items():
            if key == "choices":
                continue
            if value is not None or key not in top:
                top[key] = value
        for choice in event.get("choices") or ():
            index = choice.get("index", 0)
            text = text or "text" in choice
            whole = choices.setdefault(index, {"index": index, "logprobs": None,
                                               "finish_reason": None})  # fmt: skip
            if "text" in choice:
                whole["text"] = whole.get("text", "") + (choice["text"] or "")
            else:
                _join(whole.setdefault("message", {}), choice.get("delta") or {})
            if choice.get("logprobs") is not None:
                if whole["logprobs"] is None:
                    whole["logprobs"] = {}
                _join(whole["logprobs"], choice["logprobs"])
            if choice.get("finish_reason") is not None:
                whole["finish_reason"] = choice["finish_reason"]
    top["object"] = "text_completion" if text else "chat.completion"
    top["choices"] = [choices[i] for i in sorted(choices)]
    return top


def _join(into: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if key == "tool_calls":
            calls = into.setdefault("tool_calls", [])
            for call in value or ():
                while len(calls) <= call.get("index", 0):
                    calls.append({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}})  # fmt: skip
                merged = calls[call.get("index", 0)]
                merged["id"] = call.get("id") or merged["id"]
                for part in ("name", "arguments"):
                    merged["function"][part] += (call.get("function") or {}).get(part) or ""
        elif isinstance(value, str) and isinstance(into.get(key), str) and key != "role":
            into[key] += value
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key].extend(value)
        elif value is not None or key not in into:
            into[key] = value


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # Anthropic's 529
        return "Overloaded"


def _not_found(path: str) -> Reply:
    return json_reply(404, {"error": f"no route for {path}"})


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, chunks=[_dumps(payload)], chunked=False, headers=headers or {})


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --- OpenAI --------------------------------------------------------------------------------


def sse_data(payloads: Iterable[Any], done: bool = True) -> list[bytes]:
    """OpenAI's framing: `data: {json}\\n\\n` per chunk, then `data: [DONE]\\n\\n`."""
    events = [b"data: " + _dumps(p) + b"\n\n" for p in payloads]
    return [*events, b"data: [DONE]\n\n"] if done else events


def openai_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    text: str | None = None,
    usage: dict[str, int] | None = None,
    empty: bool = False,
) -> dict[str, Any]:
    """A `chat.completion.chunk` (or `text_completion` when `text` is given)."""
    if text is not None:
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None}
        kind = "text_completion"
    else:
        choice = {"index": 0, "delta": delta or {}, "logprobs": None}
        kind = "chat.completion.chunk"
    choice["finish_reason"] = finish_reason
    return {
        "id": "chatcmpl-abc123",
        "object": kind,
        "created": 1731000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [] if empty else [choice],
        "usage": usage,
    }


def openai_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def openai_chat(
    texts: list[str],
    finish: str = "stop",
    usage: tuple[int, int] | None = (11, 2),
    **reply: Any,
) -> Reply:
    """What OpenAI streams with include_usage: a role chunk, deltas, the finish chunk, then a
    chunk with no choices and the usage."""
    chunks = [openai_chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [openai_chunk({"content": t}) for t in texts]
    chunks.append(openai_chunk({}, finish))
    if usage:
        chunks.append(openai_chunk(usage=openai_usage(*usage), empty=True))
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream", **reply)


def openai_completion(
    texts: list[str], finish: str = "stop", usage: tuple[int, int] | None = (4, 2)
) -> Reply:
    chunks = [openai_chunk(text=t) for t in texts]
    chunks.append(openai_chunk(text="", finish_reason=finish))
    if usage:
        chunks.append(openai_chunk(text="", usage=openai_usage(*usage), empty=True))
    return Reply(chunks=sse_data(chunks), content_type="text/event-stream")


def openai_error(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    error = {"message": message, "type": type, "param": param, "code": code}
    return json_reply(status, {"error": error}, headers)


# --- Ollama --------------------------------------------------------------------------------

_OLLAMA_TIME = "2024-11-08T10:00:00.000000Z"


def ndjson(objects: Iterable[Any]) -> list[bytes]:
    return [_dumps(o) + b"\n" for o in objects]


def ollama_final(
    done_reason: str = "stop",
    prompt_eval_count: int | None = 26,
    eval_count: int | None = 3,
    *,
    generate: bool = False,
) -> dict[str, Any]:
    final: dict[str, Any] = {"model": "llama3.2", "created_at": _OLLAMA_TIME}
    if generate:
        final["response"] = ""
    else:
        final["message"] = {"role": "assistant", "content": ""}
    final |= {
        "done_reason": done_reason,
        "done": True,
        "total_duration": 5191566416,
        "load_duration": 2154458,
        "prompt_eval_duration": 383809000,
        "eval_duration": 4799921000,
    }
    if prompt_eval_count is not None:
        final["prompt_eval_count"] = prompt_eval_count
    if eval_count is not None:
        final["eval_count"] = eval_count
    return final


def ollama_chat(
    texts: list[str],
    done_reason: str = "stop",
    prompt_eval_count: int | None = 26,
    eval_count: int | None = 3,
    tool_calls: list[dict[str, Any]] | None = None,
    **reply: Any,
) -> Reply:
    lines = [
        {
            "model": "llama3.2",
            "created_at": _OLLAMA_TIME,
            "message": {"role": "assistant", "content": t},
            "done": False,
        }
        for t in texts
    ]
    if tool_calls:
        message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
        lines.append(
            {"model": "llama3.2", "created_at": _OLLAMA_TIME, "message": message, "done": False}
        )
    lines.append(ollama_final(done_reason, prompt_eval_count, eval_count))
    return Reply(chunks=ndjson(lines), content_type="application/x-ndjson", **reply)


def ollama_generate(texts: list[str], done_reason: str = "stop") -> Reply:
    lines: list[dict[str, Any]] = [
        {"model": "llama3.2", "created_at": _OLLAMA_TIME, "response": t, "done": False}
        for t in texts
    ]
    lines.append(ollama_final(done_reason, 5, len(texts), generate=True))
    return Reply(chunks=ndjson(lines), content_type="application/x-ndjson")


def ollama_error(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message})


# --- Anthropic -----------------------------------------------------------------------------


def anthropic_event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: ".encode() + _dumps(payload) + b"\n\n"


def anthropic_events(
    texts: list[str],
    stop_reason: str = "end_turn",
    input_tokens: int = 25,
    output_tokens: int = 3,
    *,
    cache_read: int = 0,
    tool: tuple[str, str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """The Messages stream: message_start, a ping, a text block (and a tool_use block with
    `(id, name, json parts)`), message_delta with the stop reason and usage, message_stop."""
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        for t in texts
    ]
    events.append({"type": "content_block_stop", "index": 0})
    if tool:
        tool_id, name, parts = tool
        block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        events.append({"type": "content_block_start", "index": 1, "content_block": block})
        events += [
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part},
            }
            for part in parts
        ]
        events.append({"type": "content_block_stop", "index": 1})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


def anthropic_stream(events: list[dict[str, Any]], **reply: Any) -> Reply:
    return Reply(
        chunks=[anthropic_event(e) for e in events], content_type="text/event-stream", **reply
    )


def anthropic_error_body(type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": type, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def anthropic_error(
    status: int, type: str, message: str, headers: dict[str, str] | None = None
) -> Reply:
    return json_reply(status, anthropic_error_body(type, message), headers)


# --- consuming a backend stream --------------------------------------------------------------


@dataclass
class Piece:
    """What choice 0 of one `Out` says, for tests that read a backend's stream by choice 0:
    its text (chat delta or completion text), its tool-call deltas; the last Out's finish
    reason and usage."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


def piece_of(out: Out) -> Piece | None:
    """`out` seen through choice 0; None when it says nothing (a role or finish chunk)."""
    content = tools = None
    if out.chunk:
        for choice in json.loads(out.chunk).get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if "delta" in choice:
                content = choice["delta"].get("content") or None
                tools = choice["delta"].get("tool_calls") or None
            else:
                content = choice.get("text") or None
    piece = Piece(content, tools, out.finish_reason, out.usage)
    return None if piece == Piece() else piece


async def collect_outs(outs: AsyncIterator[Out]) -> list[Out]:
    return [out async for out in outs]


async def collect(outs: AsyncIterator[Out]) -> list[Piece]:
    return [piece for out in await collect_outs(outs) if (piece := piece_of(out)) is not None]


def chunks_of(outs: list[Out]) -> list[dict[str, Any]]:
    """The chunks a client would get, decoded."""
    return [json.loads(out.chunk) for out in outs if out.chunk]


async def collect_until_error(outs: AsyncIterator[Out]) -> tuple[list[Piece], BackendError]:
    """The pieces that arrived before the stream failed, and the failure."""
    got: list[Piece] = []
    try:
        async for out in outs:
            piece = piece_of(out)
            if piece is not None:
                got.append(piece)
    except BackendError as error:
        return got, error
    raise AssertionError(f"the stream did not fail; it yielded {got}")


async def assert_cancel_closes_upstream(server: FakeUpstream, pieces: AsyncIterator[Out]) -> None:
    """Cancel the task iterating `pieces` after its first piece; the server must see the
    connection close within a second."""
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in pieces:
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    assert not server.disconnected.is_set()
    cancelled_at = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.disconnected.wait(), 1.0)
    assert server.disconnected_at is not None
    assert server.disconnected_at - cancelled_at < 1.0
