"""Reply frames a worker sends to the api on the job's `Llmq-Reply` subject.

The kind travels in the `Llmq-Frame` header so the api can route a `chunk` without parsing
it: a chunk body is a ready `chat.completion.chunk` JSON document written to the client's
socket as it is. The other kinds carry one of the tagged structs below.

A `chunk` frame may hold several chunks (all that one read from the upstream brought), then
with header `Llmq-Chunks: n`: the documents joined by `CHUNK_SEPARATOR`, so that writing
`data: <body>\n\n` still gives the client n well-formed SSE events, unchanged apis included.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct

from llmq.schemas.openai import ErrorBody, Usage

ACCEPTED: Final = "accepted"
CHUNK: Final = "chunk"
DONE: Final = "done"
ERROR: Final = "error"
PING: Final = "ping"

CHUNK_SEPARATOR: Final = b"\n\ndata: "
"""Between the chunks of one frame: the end of one SSE event and the start of the next."""


def joinable(chunk: bytes) -> bool:
    """A chunk may share a frame only when it has no line break (true of every JSON
    document llmq encodes or relays), so that splitting a frame is exact."""
    return b"\n" not in chunk


def join_chunks(chunks: list[bytes]) -> bytes:
    """One frame body for several `joinable` chunks."""
    return CHUNK_SEPARATOR.join(chunks)


def split_chunks(body: bytes) -> list[bytes]:
    """The chunks of a `chunk` frame, one or several, for consumers that need them one by
    one (the SSE relay does not: it writes the body as it is). Exact without the header:
    a chunk has no line break, so the separator only ever stands between two chunks."""
    return body.split(CHUNK_SEPARATOR)


class Accepted(Struct, tag=ACCEPTED, tag_field="frame"):
    """A worker took the job and started it."""

    worker: str
    attempt: int = 1


class Done(Struct, tag=DONE, tag_field="frame", omit_defaults=True):
    """The job ended normally.

    `body` is set for non-streaming requests: the whole OpenAI response (a
    `chat.completion`, `text_completion` or embedding list), encoded once by the worker, so a
    non-streaming job costs two frames however long its answer is.
    """

    usage: Usage
    finish_reason: str | None = None
    body: msgspec.Raw = msgspec.Raw()


class Failed(Struct, tag=ERROR, tag_field="frame", omit_defaults=True):
    """The job failed; `status` is the HTTP status the client should see."""

    status: int
    error: ErrorBody
    retry_after: float | None = None


def failure(
    status: int, message: str, type: str, code: str | None, param: str | None = None
) -> Failed:
    return Failed(
        status=status, error=ErrorBody(message=message, type=type, param=param, code=code)
    )


Frame = Accepted | Done | Failed

frame_encoder: Final = msgspec.json.Encoder()
frame_decoder: Final = msgspec.json.Decoder(Frame)
