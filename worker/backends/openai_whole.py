"""A non-streamed OpenAI-compatible reply: the upstream's one JSON body, relayed.

When the client asked for no stream the openai backend asks the upstream for none either,
and relays the body it gets as it came, patched only where the gateway must: llmq's `id` and
`model`; a null `system_fingerprint` or `service_tier` left out (the spec types them as
strings); `"refusal": null` added to a message that has none (the spec requires it); the
usage counted here when the upstream sent none. Every other byte (all choices with their
index, logprobs, reasoning, tool calls, usage details, fields llmq does not know) reaches the
client unchanged. Only the choices' output and the usage are decoded, once, for accounting.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from llmq.schemas.openai import Usage, raw_fields_decoder
from llmq.worker.backends.base import Out, ReplyTo
from llmq.worker.upstream.error_mapping import malformed, stream_error
from llmq.worker.upstream.usage import Tally

OMITTED_WHEN_NULL = ("system_fingerprint", "service_tier")
"""Top-level fields the spec types as strings: a null from the upstream is left out."""


class UpstreamUsage(Struct):
    """The usage an upstream reports (streamed or whole), details as it sent them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None

    def typed(self) -> Usage:
        usage = Usage(self.prompt_tokens, self.completion_tokens, self.total_tokens)
        if self.prompt_tokens_details is not None:
            usage.prompt_tokens_details = self.prompt_tokens_details
        if self.completion_tokens_details is not None:
            usage.completion_tokens_details = self.completion_tokens_details
        return usage


def final_usage(reported: Usage | None, tally: Tally) -> Usage:
    """The upstream's usage where it gave one, counted by `tally` where it did not."""
    if reported is None or (reported.prompt_tokens == 0 and reported.completion_tokens == 0):
        return tally.usage()
    if reported.total_tokens == 0:
        return tally.usage(reported.prompt_tokens, reported.completion_tokens)
    return reported


class UpstreamFunction(Struct):
    name: str | None = None
    arguments: str | None = None


class UpstreamToolCall(Struct):
    """A tool call as an upstream sends it (whole, or one delta of it). Typed, so a value
    of the wrong type is a malformed reply (502) where it is read, not a crash in a fold
    that turns it into Messages or Responses output later; the client still gets the
    upstream's bytes."""

    index: int = 0
    id: str | None = None
    type: str | None = None
    function: UpstreamFunction | None = None


class _Message(Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | UnsetType | None = UNSET
    tool_calls: list[UpstreamToolCall] | None = None


class _Choice(Struct):
    index: int = 0
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Body(Struct):
    choices: list[_Choice] | None = None
    usage: UpstreamUsage | None = None
    error: Any = None


_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(_Body)
_choices_decoder = msgspec.json.Decoder(list[Any])
_NULL = b"null"


def relay_whole(raw: bytes, reply: ReplyTo, tally: Tally, completion: bool) -> Out:
    """The client's body from the upstream's, with the usage and finish reason beside it."""
    try:
        body = _body_decoder.decode(raw)
        fields = raw_fields_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise malformed(str(exc)) from None
    if body.error is not None:
        raise stream_error({"error": body.error})
    reported = body.usage.typed() if body.usage is not None else None
    counting = reported is None or reported.total_tokens == 0  # else nothing is counted
    finish: str | None = None
    refusal_missing = False
    for choice in body.choices or ():
        if choice.finish_reason and (choice.index == 0 or finish is None):
            finish = choice.finish_reason
        message = choice.message
        if message is not None and message.refusal is UNSET and not completion:
            refusal_missing = True
        if counting:
            _count(choice, tally)
    if refusal_missing:
        fields["choices"] = msgspec.Raw(_encoder.encode(_with_refusal(fields["choices"])))
    usage = final_usage(reported, tally)
    if usage is not reported:
        fields["usage"] = msgspec.Raw(_encoder.encode(usage))
    for key in OMITTED_WHEN_NULL:
        value = fields.get(key)
        if value is not None and bytes(value) == _NULL:
            del fields[key]
    fields["id"] = msgspec.Raw(_encoder.encode(reply.id))
    fields["model"] = msgspec.Raw(_encoder.encode(reply.model))
    whole = _encoder.encode(fields)
    return Out(tokens=True, usage=usage, finish_reason=finish or "stop", body=whole)


def _count(choice: _Choice, tally: Tally) -> None:
    """Remember a choice's output, to count its tokens (an upstream without usage)."""
    tally.add(choice.text, choice.index)
    message = choice.message
    if message is None:
        return
    refusal = message.refusal if isinstance(message.refusal, str) else None
    for text in (message.content, message.reasoning_content, message.reasoning, refusal):
        tally.add(text, choice.index)
    for call in message.tool_calls or ():
        if call.function is not None:
            tally.add(call.function.arguments, choice.index)


def _with_refusal(raw: msgspec.Raw) -> list[Any]:
    choices = _choices_decoder.decode(raw)
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.setdefault("refusal", None)
    return choices
