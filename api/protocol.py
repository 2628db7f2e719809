"""Reading and validating request bodies: size limit first, then msgspec decode, with
OpenAI-style 400/413 errors that name the offending field."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from starlette.requests import Request

from llmq.api.errors import ApiError

T = TypeVar("T")

_PATH = re.compile(r"at `\$\.?(.*)`")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it grows past `limit` (never buffer more)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds {limit} bytes", "request_too_large")


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    if not body:
        raise ApiError(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        param = match.group(1) if match and match.group(1) else None
        if param is None and "missing required field" in message:
            field = re.search(r"`(\w+)`", message)
            param = field.group(1) if field else None
        raise ApiError(400, message, "invalid_request", param=param) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "invalid_json") from None
