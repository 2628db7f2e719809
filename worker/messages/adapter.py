"""Running a `message` job (Anthropic Messages) on a chat backend: translate the request
(`to_chat`), run the backend's chat stream, fold its chunks into Messages events
(`events`), and send them as the job's frames — each event's JSON one chunk, which the api
names by its `type`. A request without `stream` gets the whole Message in the `done` frame.

Events wait for the first output, so a job retried on another worker before any output
never shows the client two `message_start`s (as `worker/responses_api` does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done
from llmq.schemas.openai import ChatCompletionRequest, Usage
from llmq.schemas.text import count_tokens
from llmq.worker.backends.base import Backend, BackendError, Call, ReplyTo
from llmq.worker.messages.events import Event, MessageEvents
from llmq.worker.messages.to_chat import Unsupported, chat_request
from llmq.worker.replies import FrameSender
from llmq.worker.responses_api.adapter import Started

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def read_request(body: bytes) -> dict[str, Any]:
    """The job's body as JSON; msgspec.ValidationError when it is not a Messages request."""
    request = _decoder.decode(body)
    if not isinstance(request.get("model"), str):
        raise msgspec.ValidationError("a message request needs a `model`")
    return request


def chat_of(request: dict[str, Any]) -> tuple[ChatCompletionRequest, bytes]:
    """The chat request a Messages request stands for: typed, and as the JSON a pass-through
    chat backend forwards."""
    try:
        # the backend is always read as a stream; a whole reply is folded from it
        chat = chat_request(request) | {"stream": True, "stream_options": {"include_usage": True}}
        return msgspec.convert(chat, ChatCompletionRequest), _encoder.encode(chat)
    except Unsupported as exc:
        raise BackendError(
            str(exc), status=400, type="invalid_request_error",
            code="unsupported_parameter", param=exc.param,
        ) from None  # fmt: skip
    except msgspec.ValidationError as exc:
        raise BackendError(
            f"the request has no chat form: {exc}", status=400, type="invalid_request_error",
            code="invalid_request",
        ) from None  # fmt: skip


async def run_message(
    backend: Backend,
    upstream_names: Mapping[str, str],
    body: bytes,
    job: JobEnvelope,
    sender: FrameSender,
    started: Started,
) -> Usage:
    """Serve one Messages job through `backend.chat`; answers the usage."""
    request = read_request(body)
    chat, chat_body = chat_of(request)
    stream = bool(request.get("stream"))
    fold = MessageEvents(f"msg_{job.id}", request["model"])
    pending = fold.start() if stream else []
    begun = False
    usage: Usage | None = None
    texts: list[str] = []
    call = Call.of(
        chat,
        upstream_names.get(chat.model, chat.model),
        ReplyTo(f"chatcmpl-{job.id}", chat.model, int(time.time()), include_usage=True),
        chat_body,
    )
    async for out in backend.chat(call):
        if out.usage is not None:
            usage = out.usage
        if not out.chunk:
            continue
        chunk = _decoder.decode(out.chunk)
        events = fold.feed(chunk)
        if not events:
            continue
        texts.extend(e["delta"].get("text", "") for e in events if "delta" in e)
        if not begun:
            begun = True
            await started(stream)
        if stream:
            pending += events
            await _send(sender, pending)
            pending = []
    if usage is None:
        n = count_tokens("".join(texts))
        usage = Usage(0, n, n)
    closing = fold.finish(usage)
    if stream:
        await _send(sender, pending + closing)
    done = Done(usage=usage, finish_reason=fold.finish_reason)
    if not stream:  # a stream's client has the events; a whole reply the Message
        done.body = msgspec.Raw(_encoder.encode(fold.message))
    await sender.done(done)
    return usage


async def _send(sender: FrameSender, events: list[Event]) -> None:
    await sender.chunks([_encoder.encode(event) for event in events])
