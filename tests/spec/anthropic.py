"""The anthropic SDK's own types as the test of every Messages body and stream event llmq
sends: each is validated with the SDK's pydantic models in strict mode (no coercion: a
string where Anthropic sends a number fails)."""

from __future__ import annotations

from typing import Any

from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def assert_event(event: dict[str, Any]) -> None:
    """One stream event: Anthropic's `ping` and `error` events are not in the SDK's union of
    stream events (its stream reader handles them itself), so they are checked here."""
    if event.get("type") == "ping":
        assert event == {"type": "ping"}, event
    elif event.get("type") == "error":
        ErrorResponse.model_validate(event, strict=True)
    else:
        _EVENT.validate_python(event, strict=True)


def assert_message(body: dict[str, Any]) -> Message:
    return Message.model_validate(body, strict=True)


def assert_count(body: dict[str, Any]) -> MessageTokensCount:
    return MessageTokensCount.model_validate(body, strict=True)


def assert_error(body: dict[str, Any]) -> ErrorResponse:
    return ErrorResponse.model_validate(body, strict=True)
