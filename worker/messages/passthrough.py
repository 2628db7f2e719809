"""A `message` job on an `anthropic` worker: the client's request goes to `POST
{url}/v1/messages` byte for byte, only `model` changed to the upstream's name, with the
client's `anthropic-version` (else the backend's) and `anthropic-beta`; the answer comes
back as Anthropic sent it — each stream event's JSON relayed as one chunk, or the whole
Message as the `done` body. Only the usage is read, for booking: input, output, cache
reads and cache writes. `count_tokens` goes to `{url}/v1/messages/count_tokens` the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done
from llmq.schemas.openai import Usage, patch_body
from llmq.worker.backends.anthropic import API_VERSION, TRANSIENT_ERRORS
from llmq.worker.backends.base import BackendConfig, BackendError, Out
from llmq.worker.replies import FrameSender
from llmq.worker.responses_api.adapter import Started
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, error_fields, malformed
from llmq.worker.upstream.sse import SSEDecoder


class _Usage(Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(Struct):
    usage: _Usage | None = None
    model: str = ""


class _Delta(Struct):
    stop_reason: str | None = None


class _Event(Struct):
    """What the pass-through reads of an event (or a whole Message): the rest is relayed.
    The stop reason and a whole Message's content are typed only to refuse a backend that
    sends them of the wrong type (a 502 `upstream_malformed`, as for any malformed reply),
    since the client's SDK could not read them; their values pass through."""

    type: str = ""
    message: _Message | None = None
    usage: _Usage | None = None
    error: dict[str, object] | None = None
    delta: _Delta | None = None
    stop_reason: str | None = None
    content: list[msgspec.Raw] | None = None


_event = msgspec.json.Decoder(_Event)
_model = msgspec.json.Decoder(_Message)
COUNTED_UPSTREAM = "upstream"
"""The `done` frame's `finish_reason` of a count_tokens job the upstream answered."""
MAX_CLIENTS = 16
_closing: set[asyncio.Future[None]] = set()
_TICK = Out()
_TOKEN = Out(tokens=True)
OUTPUT: frozenset[str] = frozenset({"content_block_start", "content_block_delta"})
"""Events that carry output: the first one is the job's point of no return."""


class Tally:
    """Anthropic's counts as they arrive: inputs with `message_start` (and again, final,
    with `message_delta` in newer versions), output cumulative."""

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_write = 0

    def add(self, usage: _Usage | None) -> None:
        if usage is None:
            return
        if usage.input_tokens is not None:
            self.input = usage.input_tokens
        if usage.output_tokens is not None:
            self.output = usage.output_tokens
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cache_write = usage.cache_creation_input_tokens

    def usage(self) -> Usage:
        """In llmq's terms (`schemas.usage.cache_counts` reads the cache parts back)."""
        prompt = self.input + self.cache_read + self.cache_write
        usage = Usage(prompt, self.output, prompt + self.output)
        if self.cache_read or self.cache_write:
            usage.prompt_tokens_details = {
                "cached_tokens": self.cache_read,
                "cache_creation_tokens": self.cache_write,
            }
        return usage


class _Events:
    """A StreamParser that keeps each event's data bytes until `message_stop`."""

    def __init__(self) -> None:
        self.done = False
        self.sse = SSEDecoder()
        self.events: list[bytes] = []
        """Events not sent yet, as their data bytes."""
        self.begun = False
        """An event with output was read: the events so far may go to the client."""
        self.tally = Tally()

    def feed(self, line: str) -> list[Out]:
        found = self.sse.feed(line)
        return self._event(found[1]) if found else []

    def eof(self) -> list[Out]:
        found = self.sse.flush()
        outs = self._event(found[1]) if found else []
        if not self.done:
            raise ended_early()
        return outs

    def _event(self, data: str) -> list[Out]:
        raw = data.encode()
        event = _event.decode(raw)
        if event.type == "error":
            raise _stream_error(event.error or {}, retryable=not self.begun)
        if event.type == "message_start" and event.message is not None:
            self.tally.add(event.message.usage)
        elif event.type == "message_delta":
            self.tally.add(event.usage)
        self.done = event.type == "message_stop"
        self.events.append(raw)
        if event.type in OUTPUT:
            self.begun = True
            return [_TOKEN]
        return [_TICK]


def _stream_error(error: Mapping[str, object], *, retryable: bool) -> BackendError:
    """An `error` event: Anthropic's own type kept, so the client sees the same one."""
    fields = error_fields({"error": dict(error)})
    kind = fields.type or "api_error"
    status = 529 if kind == "overloaded_error" else 500
    return BackendError(
        f"upstream error: {fields.message or kind}",
        status=status,
        type=kind,
        code=kind,
        retryable=retryable and kind in TRANSIENT_ERRORS,
    )


class MessagesPassthrough:
    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._base = base_url(config, "https://api.anthropic.com")
        self._upstreams: dict[tuple[str, str], Upstream] = {}
        """One pooled client per (`anthropic-version`, `anthropic-beta`) clients send."""

    def __repr__(self) -> str:
        return f"MessagesPassthrough(url={self._base!r})"

    async def aclose(self) -> None:
        upstreams = list(self._upstreams.values())
        self._upstreams.clear()
        for upstream in upstreams:
            await upstream.aclose()

    def _upstream(self, job: JobEnvelope) -> Upstream:
        """The client whose fixed headers are the job's versions (a few distinct pairs in
        practice: the oldest is closed beyond `MAX_CLIENTS`)."""
        key = (job.anthropic_version or API_VERSION, job.anthropic_beta)
        found = self._upstreams.pop(key, None)
        if found is None:
            headers = {"anthropic-version": key[0]}
            if key[1]:
                headers["anthropic-beta"] = key[1]
            if self._config.api_key:
                headers["x-api-key"] = self._config.api_key
            found = Upstream(self._config, headers, self._base)
            if len(self._upstreams) >= MAX_CLIENTS:
                oldest = next(iter(self._upstreams))
                closing = asyncio.ensure_future(self._upstreams.pop(oldest).aclose())
                _closing.add(closing)  # held until it ends
                closing.add_done_callback(_closing.discard)
        self._upstreams[key] = found  # most recently used last
        return found

    @staticmethod
    def _body(upstream_names: Mapping[str, str], body: bytes) -> bytes:
        public = _model.decode(body).model
        upstream = upstream_names.get(public, public)
        return body if upstream == public else patch_body(body, {"model": upstream})

    async def run(
        self,
        upstream_names: Mapping[str, str],
        body: bytes,
        job: JobEnvelope,
        sender: FrameSender,
        *,
        started: Started,
    ) -> Usage:
        sent = self._body(upstream_names, body)
        if job.message_op == "count_tokens":
            return await self._whole(f"{self._base}/v1/messages/count_tokens", sent, job, sender)
        if not _streams(body):
            await started(False)
            return await self._whole(f"{self._base}/v1/messages", sent, job, sender)
        parser = _Events()
        url = f"{self._base}/v1/messages"
        begun = False
        stream = self._upstream(job).stream(url, lambda: sent, parser)
        async for _ in stream:
            if not parser.begun:
                continue  # held back: the job may still go to another worker
            if not begun:
                begun = True
                await started(True)
            await sender.chunks(parser.events.copy())
            parser.events.clear()
        if parser.events:
            await sender.chunks(parser.events)
        usage = parser.tally.usage()
        await sender.done(Done(usage=usage, finish_reason=None))
        return usage

    async def _whole(self, url: str, body: bytes, job: JobEnvelope, sender: FrameSender) -> Usage:
        answer = await self._upstream(job).post(url, lambda: body)
        tally = Tally()
        try:
            tally.add(_event.decode(answer).usage)
        except msgspec.DecodeError as exc:
            raise malformed(str(exc)) from None
        counting = job.message_op == "count_tokens"
        usage = Usage() if counting else tally.usage()
        counted_by = COUNTED_UPSTREAM if counting else None  # `finish_reason` of a count
        await sender.done(Done(usage=usage, finish_reason=counted_by, body=msgspec.Raw(answer)))
        return usage


class _Stream(Struct):
    stream: bool = False


_stream = msgspec.json.Decoder(_Stream)


def _streams(body: bytes) -> bool:
    return _stream.decode(body).stream
