"""Relaying one `message` job: its chunks as Anthropic's named SSE events (`event: <type>`,
the data as the worker sent it), or its whole Message as one JSON body.

The job's life — the reservation released exactly once with the real usage, the fair-share
place, the request record — is the chat relay's (`engine.job.QueuedJob`); only what the client sees
differs. A stream that fails after it started ends with an `error` event in Anthropic's
shape; there is no `[DONE]` line.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from llmq.api.engine.job import QueuedJob
from llmq.api.errors import public_failure
from llmq.api.messages.protocol import STATUSES, error_body
from llmq.api.sse import named_event
from llmq.schemas.frames import Done, Failed, split_chunks

Event = bytes | Done | Failed
_HEAD = b'{"type":"'
_START = len(_HEAD)


class _Typed(msgspec.Struct):
    type: str = "message"


_typed = msgspec.json.Decoder(_Typed)


def event_type(data: bytes) -> bytes:
    """The `type` of an event's JSON: read from its head when it comes first (every event
    llmq encodes, and Anthropic's), else decoded."""
    if data.startswith(_HEAD):
        end = data.find(b'"', _START)
        if end > 0:
            return data[_START:end]
    try:
        return _typed.decode(data).type.encode()
    except msgspec.DecodeError:
        return b"message"


def sse_events(body: bytes) -> tuple[bytes, int]:
    """A chunk frame's body (one or several events) as named SSE events (`named_event`'s
    bytes, made in one join), and their count."""
    events = split_chunks(body)
    parts: list[bytes] = []
    for data in events:
        end = data.find(b'"', _START) if data.startswith(_HEAD) else -1
        name = data[_START:end] if end > 0 else event_type(data)
        parts += (b"event: ", name, b"\ndata: ", data, b"\n\n")
    return b"".join(parts), len(events)


class MessageRun(QueuedJob):
    async def _relay(
        self, first: Event, events: AsyncGenerator[Event, None]
    ) -> AsyncIterator[bytes]:
        rt = self.serving.rt
        rt.open_streams += 1
        try:
            ev: Event = first
            while True:
                if isinstance(ev, bytes):
                    data, count = sse_events(ev)
                    self.relayed += count
                    yield data
                elif isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    yield named_event(b"error", self._error(ev))
                    break
                else:
                    self.settle(200, ev)
                    break
                try:
                    ev = await events.__anext__()
                except StopAsyncIteration:
                    break
        finally:
            rt.open_streams -= 1
            self.stream_ended()
            self.settle(499, code="client_closed")
            await events.aclose()

    def _error(self, frame: Failed) -> bytes:
        public = public_failure(frame, self.record.job_id)
        status = STATUSES.get(public.status, public.status)
        return error_body(status, public.error.message, self.record.job_id)
