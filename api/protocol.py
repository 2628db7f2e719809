"""Reading a request: its body within the size limit (an OpenAI-style 413; decoding and
validating it is `preparation`'s job) and the llmq headers a client may send."""

from __future__ import annotations

import math

from starlette.requests import Request

from llmq.api.errors import ApiError


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


DEADLINE_HEADER = "x-llmq-deadline"
"""A client's own first-token deadline for one request, in seconds."""


def first_token_deadline(request: Request, default: float, maximum: float) -> float:
    """Seconds the request may wait for its first token: the client's `X-Llmq-Deadline` or
    the api's default, never above `max_deadline`. A value that is not a positive number of
    seconds is a 400 (before any quota is touched)."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return min(default, maximum)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ApiError(
            400,
            "X-Llmq-Deadline must be a positive number of seconds",
            "invalid_deadline",
            param="X-Llmq-Deadline",
        )
    return min(seconds, maximum)
