"""Reading request bodies: the size limit first, with an OpenAI-style 413 (decoding and
validating them is `preparation`'s job)."""

from __future__ import annotations

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
