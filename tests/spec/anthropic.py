"""The anthropic SDK's own types as the test of every Messages body and stream event llmq
sends: each is validated with the SDK's pydantic models in strict mode (no coercion: a
string where Anthropic sends a number fails). The SDK is imported at the first check (2 s
of CPU, which every xdist worker would otherwise pay to collect the suite)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from tests.lazy import lazy

if TYPE_CHECKING:
    from anthropic.types import Message, MessageTokensCount
    from anthropic.types.shared import ErrorResponse

anthropic = lazy("anthropic")


@cache
def _event() -> TypeAdapter[Any]:
    return TypeAdapter(anthropic.types.RawMessageStreamEvent)


def assert_event(event: dict[str, Any]) -> None:
    """One stream event: Anthropic's `ping` and `error` events are not in the SDK's union of
    stream events (its stream reader handles them itself), so they are checked here."""
    if event.get("type") == "ping":
        assert event == {"type": "ping"}, event
    elif event.get("type") == "error":
        assert_error(event)
    else:
        _event().validate_python(event, strict=True)


def assert_message(body: dict[str, Any]) -> Message:
    return anthropic.types.Message.model_validate(body, strict=True)


def assert_count(body: dict[str, Any]) -> MessageTokensCount:
    return anthropic.types.MessageTokensCount.model_validate(body, strict=True)


def assert_error(body: dict[str, Any]) -> ErrorResponse:
    return anthropic.types.shared.ErrorResponse.model_validate(body, strict=True)
