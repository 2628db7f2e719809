"""The request body of one of OpenAI's other endpoints: JSON or multipart, bounded, and the
model it names. Pure, apart from reading the already-bounded bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from llmq.api.batch.multipart import read_multipart
from llmq.api.errors import ApiError

MAX_PARTS = 64
"""Most parts a multipart request may have (OpenAI's forms have a handful)."""
MAX_FIELD_BYTES = 4096
"""Largest text field read for the model name."""

_fields = msgspec.json.Decoder(dict[str, Any])


class _Field:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if self.keep and len(self.data) + len(data) <= MAX_FIELD_BYTES:
            self.data += data

    def close(self) -> None:
        pass


class _Form:
    def __init__(self) -> None:
        self.parts = 0
        self.model: _Field | None = None

    def open(self, name: str, filename: str | None) -> _Field:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(
                400, f"a multipart body may have at most {MAX_PARTS} parts", "invalid_request"
            )
        field = _Field(keep=name == "model" and filename is None and self.model is None)
        if field.keep:
            self.model = field
        return field


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def model_of(body: bytes, content_type: str) -> str:
    """The `model` the body names; 400 when there is none or the body is malformed."""
    kind = content_type.split(";", 1)[0].strip().lower()
    model: Any = None
    if kind == "multipart/form-data":
        form = _Form()
        await read_multipart(_once(body), content_type, form.open)
        model = form.model.data.decode("utf-8", "replace").strip() if form.model else None
    elif kind == "application/json" or not kind:
        try:
            fields = _fields.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ApiError(400, "the body is not a JSON object", "invalid_json") from None
        model = fields.get("model")
    else:
        raise ApiError(
            415,
            "the body must be application/json or multipart/form-data",
            "unsupported_media_type",
        )
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required", "invalid_request", param="model")
    return model
