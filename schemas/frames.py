"""Reply frames a worker sends to the api on the job's `Llmq-Reply` subject.

The kind travels in the `Llmq-Frame` header so the api can route a `chunk` without parsing
it: a chunk body is a ready `chat.completion.chunk` JSON document written to the client's
socket as it is. The other kinds carry one of the tagged structs below.
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
