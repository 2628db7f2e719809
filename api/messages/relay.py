"""Relaying one `message` job: its chunks as Anthropic's named SSE events (`event: <type>`,
the data as the worker sent it), or its whole Message as one JSON body.

The job's life — the reservation released exactly once with the real usage, the fair-share
place, the request record — is the chat relay's (`engine.job.QueuedJob`); only what the client sees
differs. A stream that fails after it started ends with an `error` event in Anthropic's
shape; there is no `[DONE]` line.
"""

from __future__ import annotations

import msgspec

from llmq.api.engine.job import QueuedJob
from llmq.api.errors import public_failure
from llmq.api.messages.protocol import STATUSES, error_body
from llmq.api.sse import named_event
from llmq.schemas.frames import Failed, split_chunks

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
    """A `message` job's stream: named events, an `error` event when it fails after its
    start, and no `[DONE]` line."""

    def _chunk(self, data: bytes) -> bytes:
        named, count = sse_events(data)
        self.relayed += count
        return named

    async def _failed_event(self, frame: Failed) -> bytes:
        return named_event(b"error", self._error(frame))

    def _tail(self) -> bytes:
        return b""

    def _error(self, frame: Failed) -> bytes:
        public = public_failure(frame, self.record.job_id)
        status = STATUSES.get(public.status, public.status)
        return error_body(status, public.error.message, self.record.job_id)
