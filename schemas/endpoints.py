"""OpenAI's other endpoints (moderations, images, audio, rerank) as one generic job kind,
`endpoint`: the request's bytes — JSON or multipart — travel to an `openai` worker whose
model declares the endpoint, and its upstream's answer comes back as it came.

The job body is one JSON line (`EndpointCall`: the path and content type) then the request
body's bytes, untouched. The reply is a chunk holding `EndpointHead` (the upstream's status
and content type), then the upstream's body bytes in chunks as they arrive, then `done`.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct

ENDPOINT_PATHS: Final = (
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/rerank",
)
"""The endpoints a worker may declare (`LLMQ_OPENAI_ENDPOINTS`) and the api serves."""


class EndpointCall(Struct, frozen=True):
    path: str
    content_type: str


class EndpointHead(Struct, frozen=True):
    status: int
    content_type: str


_encoder = msgspec.json.Encoder()
_call = msgspec.json.Decoder(EndpointCall)
head_decoder: Final = msgspec.json.Decoder(EndpointHead)


def pack(call: EndpointCall, body: bytes) -> bytes:
    return _encoder.encode(call) + b"\n" + body


def unpack(data: bytes) -> tuple[EndpointCall, bytes]:
    """The call and the body of a job; msgspec.ValidationError when it is not one."""
    line, sep, body = data.partition(b"\n")
    if not sep:
        raise msgspec.ValidationError("an endpoint job starts with its call line")
    try:
        return _call.decode(line), body
    except msgspec.DecodeError as exc:
        raise msgspec.ValidationError(str(exc)) from None


def encode_head(head: EndpointHead) -> bytes:
    return _encoder.encode(head)
