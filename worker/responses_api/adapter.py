"""Running a Responses job on a chat backend: translate the request, run the backend's chat
stream, fold its chunks into Responses events, and send them as the job's frames.

The runner calls `run_response` for a job of kind `response`; everything else (acks,
retries, deadlines, cancellation, failures) stays the runner's. Events are held back until
the first token, so a job retried on another worker before any output never shows the
client two beginnings.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from llmq.schemas.frames import Done
from llmq.schemas.openai import ChatCompletionRequest, Usage
from llmq.schemas.responses import skeleton
from llmq.schemas.text import count_tokens
from llmq.worker.backends.base import Backend, BackendError, Call, ReplyTo
from llmq.worker.replies import FrameSender
from llmq.worker.responses_api.events import ResponseEvents, wants_summary
from llmq.worker.responses_api.to_chat import Unsupported, chat_request, namespaces

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])

Started = Callable[[bool], Awaitable[None]]
"""Called once, at the first output, with whether the job streams: a streamed job reaches
its point of no return there (the runner acks it); a whole one is acked when it ends, so a
worker that dies before then leaves it to another."""


def read_request(body: bytes, kind: str = "response") -> dict[str, Any]:
    """The job's body as JSON; msgspec.ValidationError when it is not a request of `kind`
    (`response`; `message`: `worker/messages`)."""
    request = _decoder.decode(body)
    if not isinstance(request.get("model"), str):
        raise msgspec.ValidationError(f"a {kind} request needs a `model`")
    return request


def not_for_chat(message: str, param: str) -> BackendError:
    """A field the translation to chat cannot honour (its `Unsupported`): a 400 naming it."""
    return BackendError(
        message,
        status=400,
        type="invalid_request_error",
        code="unsupported_parameter",
        param=param,
    )


def chat_of(request: dict[str, Any]) -> tuple[ChatCompletionRequest, bytes]:
    """The chat request a Responses request stands for: its typed view, and its JSON with
    every field the translation produced (what a pass-through chat backend forwards)."""
    try:
        chat = chat_request(request)
    except Unsupported as exc:
        raise not_for_chat(str(exc), exc.param) from None
    return msgspec.convert(chat, ChatCompletionRequest), _encoder.encode(chat)


def _texts(chunk: dict[str, Any]) -> list[str]:
    """The content deltas of one chat chunk (to count tokens when the backend reports none)."""
    return [
        delta["content"]
        for choice in chunk.get("choices") or ()
        if isinstance(delta := choice.get("delta"), dict) and isinstance(delta.get("content"), str)
    ]


async def run_response(
    backend: Backend,
    upstream_names: Mapping[str, str],
    body: bytes,
    job_id: str,
    sender: FrameSender,
    *,
    started: Started,
) -> Usage:
    """Serve one Responses job through `backend.chat`; answers the usage."""
    request = read_request(body)
    chat, chat_body = chat_of(request)
    stream = bool(request.get("stream"))
    response = skeleton(request, f"resp_{job_id}", _now())
    fold = ResponseEvents(
        response, quiet=not stream, summary=wants_summary(request), namespaces=namespaces(request)
    )
    opening = fold.start()
    begun = False
    usage: Usage | None = None
    texts: list[str] = []
    call = Call.of(
        chat,
        upstream_names.get(chat.model, chat.model),
        ReplyTo(f"chatcmpl-{job_id}", chat.model, _now(), include_usage=True),
        chat_body,
    )
    async for out in backend.chat(call):
        if out.usage is not None:
            usage = out.usage
        if not out.chunk:
            continue
        chunk = _decoder.decode(out.chunk)
        texts.extend(_texts(chunk))
        events = fold.feed(chunk)
        if events and not begun:
            begun = True
            await started(stream)
            if stream:
                await _send(sender, opening)
        if stream:
            await _send(sender, events)
    if usage is None:
        n = count_tokens("".join(texts))
        usage = Usage(0, n, n)
    closing = fold.finish(msgspec.to_builtins(usage))
    if stream:
        await _send(sender, closing if begun else [*opening, *closing])
    body_out = msgspec.Raw(_encoder.encode(fold.response))
    await sender.done(Done(usage=usage, finish_reason=fold.finish_reason, body=body_out))
    return usage


async def _send(sender: FrameSender, events: list[dict[str, Any]]) -> None:
    for event in events:
        await sender.chunk(_encoder.encode(event))


def _now() -> int:
    return int(time.time())
