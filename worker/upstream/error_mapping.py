"""Upstream failures mapped to the OpenAI error and HTTP status the caller gets.

An HTTP error answer (`StatusError`), a failure on the way (`TransportError`), an error
reported inside a stream, a stream cut short and a malformed body each become one
`BackendError` here, the same whatever client or backend met them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from llmq.worker.backends.base import BackendError
from llmq.worker.upstream.client import StatusError, Timeout, TransportError

MAX_MESSAGE = 1000
"""Longest upstream error text passed on to the caller."""

json_decoder = msgspec.json.Decoder()
"""Untyped JSON, for error bodies and the odd free-form field."""


class ErrorFields(NamedTuple):
    """What an upstream error body says, in OpenAI's terms."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value[:MAX_MESSAGE]
    return msgspec.json.encode(value).decode()[:MAX_MESSAGE]


def error_fields(payload: Any) -> ErrorFields:
    """The upstream's own message from any of the error shapes in use.

    OpenAI `{"error": {"message", "type", "code", "param"}}`, Anthropic `{"type": "error",
    "error": {"type", "message"}}`, Ollama and TGI `{"error": "..."}`, vLLM's older top-level
    `{"object": "error", "message", ...}`, FastAPI's `{"detail": ...}`.
    """
    if not isinstance(payload, dict):
        return ErrorFields(_text(payload))
    inner = payload.get("error")
    if isinstance(inner, str):
        return ErrorFields(_text(inner))
    if not isinstance(inner, dict):
        inner = payload
    code = inner.get("code")
    param = inner.get("param")
    kind = inner.get("type")
    return ErrorFields(
        _text(inner.get("message") or inner.get("detail")),
        kind if isinstance(kind, str) and kind != "error" else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def parse_error_body(body: bytes) -> ErrorFields:
    try:
        return error_fields(json_decoder.decode(body))
    except msgspec.DecodeError:
        return ErrorFields(_text(body.decode("utf-8", "replace").strip()))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or HTTP-date), else `retry-after-ms`."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            return None
    return None


def error_from_status(response: StatusError) -> BackendError:
    """An upstream HTTP error, mapped to what the caller should see."""
    status = response.status
    upstream = parse_error_body(response.body)
    message = upstream.message or f"upstream returned HTTP {status}"
    if status in (401, 403):
        # The worker's credential is wrong, not the caller's; never echo the upstream text,
        # which may quote part of the key.
        return BackendError(
            f"the upstream rejected this worker's credentials (HTTP {status})",
            status=502,
            type="upstream_auth_error",
            code="upstream_auth_failed",
        )
    if status == 429:
        return BackendError(
            message,
            status=429,
            type="rate_limit_error",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after(response.headers),
        )
    if status == 404:
        return BackendError(
            message,
            status=404,
            type="invalid_request_error",
            code=upstream.code or "model_not_found",
            param=upstream.param,
        )
    if status == 408:
        return BackendError(
            message, status=504, type="timeout", code="upstream_timeout", retryable=True
        )
    if 400 <= status < 500:
        return BackendError(
            message,
            status=413 if status == 413 else 400,
            type="invalid_request_error",
            code=upstream.code,
            param=upstream.param,
        )
    return BackendError(
        f"upstream error (HTTP {status}): {message}",
        status=502,
        type="upstream_error",
        code="upstream_unavailable",
        retryable=True,
        retry_after=retry_after(response.headers),
    )


def stream_error(payload: Any, *, retryable: bool = False) -> BackendError:
    """An error the upstream reported inside a stream that had already answered 200."""
    upstream = error_fields(payload)
    return BackendError(
        f"upstream error: {upstream.message or 'unknown error'}",
        status=502,
        type="upstream_error",
        code=upstream.type or upstream.code or "upstream_stream_error",
        retryable=retryable,
    )


def ended_early() -> BackendError:
    """The body ended before the protocol's last event: like a dropped connection."""
    return BackendError(
        "the upstream closed the stream before it was complete",
        status=502,
        type="upstream_error",
        code="upstream_disconnected",
        retryable=True,
    )


def malformed(reason: str) -> BackendError:
    return BackendError(
        f"the upstream sent a malformed response: {reason}"[:MAX_MESSAGE],
        status=502,
        type="upstream_error",
        code="upstream_malformed",
    )


def transport_error(exc: TransportError, *, retryable: bool) -> BackendError:
    """A failure on the way; `retryable` only while nothing went to the caller."""
    if isinstance(exc, Timeout):
        # The client only times out the connect (reads are bounded by the clock): nothing
        # was sent.
        return BackendError(
            f"upstream timed out: {type(exc).__name__}",
            status=504,
            type="timeout",
            code="upstream_timeout",
            retryable=retryable,
        )
    return BackendError(
        f"upstream connection failed: {exc or type(exc).__name__}"[:MAX_MESSAGE],
        status=502,
        type="upstream_error",
        code="upstream_unavailable",
        retryable=retryable,
    )
