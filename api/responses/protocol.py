"""Reading a `POST /v1/responses` request: its body decoded (typed, and its fields kept as
they came), the combinations refused before any work, and a high guess of its prompt tokens."""

from __future__ import annotations

from typing import Any

import msgspec

from llmq.api.errors import ApiError
from llmq.schemas.admission import Refusal
from llmq.schemas.responses import ResponseRequest, response_request_decoder

_encoder = msgspec.json.Encoder()
_fields = msgspec.json.Decoder(dict[str, Any])


def decode_request(body: bytes) -> tuple[ResponseRequest, dict[str, Any]]:
    """The request typed, and its fields as they came (passed on untouched); a 400 else."""
    if not body:
        raise Refusal(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        return response_request_decoder.decode(body), _fields.decode(body)
    except msgspec.ValidationError as exc:
        raise Refusal(400, str(exc), "invalid_request") from None
    except msgspec.DecodeError as exc:
        raise Refusal(400, f"malformed JSON: {exc}", "invalid_json") from None


def check_request(req: ResponseRequest) -> None:
    """400 for what no backend may run: conflicting history, an unstored or streamed
    background response, no input at all."""
    if req.previous_id is not None and req.conversation_id is not None:
        raise ApiError(
            400,
            "`previous_response_id` and `conversation` cannot be used together",
            "invalid_request",
            param="conversation",
        )
    if req.conversation is not None and req.conversation is not msgspec.UNSET:
        if req.conversation_id is None:
            raise ApiError(400, "invalid `conversation`", "invalid_request", param="conversation")
    if req.in_background and req.stream:
        raise ApiError(
            400,
            "streaming a background response is not supported; poll it instead",
            "unsupported_parameter",
            param="stream",
        )
    if req.in_background and not req.stores:
        raise ApiError(
            400, "a background response must be stored", "invalid_request", param="store"
        )
    empty = req.input in ("", [], msgspec.UNSET, None)
    if empty and req.previous_id is None and req.conversation_id is None:
        raise ApiError(400, "`input` is required", "invalid_request", param="input")


def estimate_prompt(fields: dict[str, Any]) -> int:
    """A high guess of the prompt tokens (see `preparation.estimate_prompt_tokens`)."""
    text = _encoder.encode([fields.get("instructions"), fields.get("input"), fields.get("tools")])
    return len(text) // 3 + 1
