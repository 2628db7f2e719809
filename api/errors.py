"""One error format for every failure: OpenAI's `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from llmq.dispatcher.publish import transient
from llmq.schemas.admission import Refusal
from llmq.schemas.frames import Failed
from llmq.schemas.openai import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()

_OWN_CODES = frozenset(
    {
        "deadline_exceeded",
        "worker_lost",
        "frames_lost",
        "attempts_exhausted",
        "job_lost",
        "empty_response",
        "worker_shutdown",
        "worker_error",
        "upstream_auth_failed",
        "service_unavailable",
        "no_worker",
        "queue_unavailable",
        "upstream_timeout",
    }
)
"""Server-side failures whose message llmq itself wrote, with nothing of the network in it."""

_GENERIC = {"upstream_unavailable": "The model backend could not be reached or failed."}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """Raise anywhere in a request; the handler renders it in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)


def api_error(refusal: Refusal) -> ApiError:
    """The HTTP form of a domain refusal (from preparation or a quota)."""
    return ApiError(
        refusal.status,
        refusal.message,
        refusal.code,
        type=refusal.type,
        param=refusal.param,
        headers=refusal.headers,
    )


def error_bytes(body: ErrorBody) -> bytes:
    return _encoder.encode(ErrorResponse(error=body))


def error_response(
    status: int, body: ErrorBody, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        error_bytes(body), status_code=status, media_type="application/json", headers=headers
    )


def public_failure(frame: Failed, job_id: str) -> Failed:
    """What a client may see of a failure: a server-side failure from the backend (5xx) may
    name internal addresses (`Connection refused (10.0.0.7:8000)`) or quote the upstream, so
    its message becomes a generic one and the detail goes to the log under the job id."""
    error = frame.error
    if frame.status < 500 or error.code in _OWN_CODES:
        return frame
    log.warning("job %s failed (%s %s): %s", job_id, frame.status, error.code, error.message)
    message = _GENERIC.get(error.code or "", "The model backend failed.")
    public = ErrorBody(message=message, type=error.type, param=error.param, code=error.code)
    return Failed(status=frame.status, error=public, retry_after=frame.retry_after)


def failed_response(frame: Failed, headers: dict[str, str]) -> Response:
    """A job's failure as the client's error response (with `retry-after` when it has one)."""
    if frame.retry_after is not None:
        headers = {**headers, "retry-after": str(max(1, round(frame.retry_after)))}
    return error_response(frame.status, frame.error, headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.body(), exc.headers)

    async def on_refusal(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        err = api_error(exc)
        return error_response(err.status, err.body(), err.headers)

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        err = ApiError(status, str(exc.detail), code)
        return error_response(status, err.body(), getattr(exc, "headers", None))

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = ApiError(400, str(first.get("msg", "invalid request")), "invalid_request", param=loc)
        return error_response(400, err.body())

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(Refusal, on_refusal)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)

    app.add_exception_handler(ClientDisconnect, _on_disconnect)
    app.add_exception_handler(UnicodeDecodeError, _on_undecodable)
    app.add_exception_handler(RecursionError, _on_undecodable)

    app.add_exception_handler(NatsError, _on_queue_error)
    app.add_exception_handler(TimeoutError, _on_queue_error)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_undecodable(_request: Request, exc: Exception) -> Response:
    # A body that no decoder could take (invalid UTF-8, nesting deeper than the decoder
    # goes) is the client's fault wherever it was decoded: a 400, never a 500.
    problem = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "nested too deeply"
    err = ApiError(400, f"the request body is {problem}", "invalid_json")
    return error_response(400, err.body())


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    if transient(exc):  # NATS electing a leader or moving to another node: it passes
        err = ApiError(
            503,
            "the job queue did not answer in time; retry",
            "queue_unavailable",
            type="server_error",
        )
        return error_response(503, err.body(), {"retry-after": "1"})
    err = ApiError(500, "internal error", "internal_error", type="server_error")
    return error_response(500, err.body())


async def _on_disconnect(request: Request, _exc: Exception) -> Response:
    # The client went away mid-body (an aborted upload, the edge's body deadline): one
    # line, not a traceback; nobody reads the answer.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _on_queue_error(request: Request, exc: Exception) -> Response:
    # Own handlers for the queue's errors: the catch-all (`_on_unexpected`) answers too, but
    # Starlette re-raises after it, and uvicorn would log a traceback for every 503 of an
    # election.
    if not transient(exc):
        log.error("unexpected queue error", exc_info=exc)
    return await _on_unexpected(request, exc)
