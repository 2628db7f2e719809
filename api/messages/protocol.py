"""The Messages API's edge: reading a request (typed and checked before any quota is
touched) and every error in Anthropic's shape, `{"type": "error", "error": {"type",
"message"}, "request_id"}`, with Anthropic's status codes and a `request-id` header.

llmq's own statuses become Anthropic's: 502 (the backend failed) → 500 `api_error`, 503 (no
worker, queue unavailable, shutting down) → 529 `overloaded_error`, 504 → 504
`timeout_error`; 413 keeps its status with `invalid_request_error` (the SDKs know no other
type for it). The type follows the status, as Anthropic's do.
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

import msgspec
from starlette.responses import Response

from llmq.api.errors import ApiError
from llmq.schemas.admission import Refusal
from llmq.schemas.messages import CountRequest, InvalidBlock, check_blocks
from llmq.schemas.openai import ErrorBody

R = TypeVar("R", bound=CountRequest)

REQUEST_ID: Final = "request-id"
TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUSES: Final = {502: 500, 503: 529}
"""llmq's statuses that Anthropic's clients know under another number."""

_encoder = msgspec.json.Encoder()
_PATH = re.compile(r"at `\$\.?(.*)`")


class _Error(msgspec.Struct):
    type: str
    message: str


class _ErrorResponse(msgspec.Struct):
    error: _Error
    request_id: str
    type: str = "error"


class _OpenAIError(msgspec.Struct):
    error: ErrorBody


_openai_error = msgspec.json.Decoder(_OpenAIError)


def decode(body: bytes, decoder: msgspec.json.Decoder[R]) -> R:
    """The request, or a 400 naming the first field that is not as Anthropic documents it."""
    if not body:
        raise invalid("request body is empty; expected a JSON object")
    try:
        request = decoder.decode(body)
        check_blocks(request)
    except InvalidBlock as exc:
        raise invalid(str(exc), exc.param) from None
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        raise invalid(str(exc), match.group(1) if match else None) from None
    except msgspec.DecodeError as exc:
        raise invalid(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise invalid("the request body is not valid UTF-8") from None
    except RecursionError:
        raise invalid("the request body is nested too deeply") from None
    if not request.messages:
        raise invalid("messages: at least one message is required", "messages")
    return request


def check_max_tokens(max_tokens: int | msgspec.UnsetType, limit: int) -> int:
    """`max_tokens` (required, as Anthropic requires it), within 1..`limit`."""
    if max_tokens is msgspec.UNSET:
        raise invalid("max_tokens: Field required", "max_tokens")
    if max_tokens < 1:
        raise invalid("max_tokens: a positive integer is required", "max_tokens")
    if max_tokens > limit:
        shown = max_tokens if max_tokens < 10**30 else "a larger number"
        raise invalid(
            f"max_tokens: {shown} > {limit}, which is the maximum allowed for this model",
            "max_tokens",
        )
    return max_tokens


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request", param=param)


def error_body(status: int, message: str, request_id: str) -> bytes:
    """Anthropic's error object for an (Anthropic) status."""
    kind = TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _encoder.encode(_ErrorResponse(_Error(kind, message), request_id))


def error_response(
    status: int, body: ErrorBody, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    shown = STATUSES.get(status, status)
    headers = {**(headers or {}), REQUEST_ID: request_id}
    if shown in (429, 529) and "retry-after" not in headers:
        headers["retry-after"] = "1"
    return Response(
        error_body(shown, body.message, request_id),
        status_code=shown,
        media_type="application/json",
        headers=headers,
    )


def from_exception(exc: ApiError | Refusal, request_id: str) -> Response:
    if isinstance(exc, Refusal):
        body = ErrorBody(message=exc.message, type=exc.type or "", code=exc.code)
        return error_response(exc.status, body, request_id, dict(exc.headers or {}))
    return error_response(exc.status, exc.body(), request_id, exc.headers)


def anthropic_shaped(response: Response, request_id: str) -> Response:
    """A response of the shared serving path, with an error body in Anthropic's shape (the
    chat relay writes OpenAI's); an answer as it is (its headers name the request)."""
    if response.status_code < 400 or response.media_type != "application/json":
        return response
    try:
        found = _openai_error.decode(bytes(response.body))
    except msgspec.DecodeError:
        found = _OpenAIError(ErrorBody(message="the request failed", type="api_error"))
    kept = {k: v for k, v in response.headers.items() if k.lower().startswith(_KEPT)}
    return error_response(response.status_code, found.error, request_id, kept)


_KEPT = ("retry-after", "x-ratelimit", "x-request-id", "x-llmq")
