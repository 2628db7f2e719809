"""Running a `message` job (Anthropic Messages) on a chat backend: translate the request
(`to_chat`), run the backend's chat stream, fold its chunks into Messages events
(`events`), and send them as the job's frames — each event's JSON one chunk, which the api
names by its `type`. A request without `stream` gets the whole Message in the `done` frame.

Events wait for the first output, so a job retried on another worker before any output
never shows the client two `message_start`s (as `worker/responses_api` does).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done
from llmq.schemas.openai import ChatCompletionRequest, Usage
from llmq.schemas.text import count_tokens
from llmq.worker.backends.base import Backend, BackendError, Call, Out, ReplyTo
from llmq.worker.messages.events import MessageEvents
from llmq.worker.messages.to_chat import Unsupported, chat_request
from llmq.worker.replies import FrameSender, drive
from llmq.worker.responses_api.adapter import Started, not_for_chat, read_request

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


def chat_of(request: dict[str, Any]) -> tuple[ChatCompletionRequest, bytes]:
    """The chat request a Messages request stands for: typed, and as the JSON a pass-through
    chat backend forwards."""
    try:
        chat = chat_request(request)
        return msgspec.convert(chat, ChatCompletionRequest), _encoder.encode(chat)
    except Unsupported as exc:
        raise not_for_chat(str(exc), exc.param) from None
    except msgspec.ValidationError as exc:
        raise BackendError(
            f"the request has no chat form: {exc}",
            status=400,
            type="invalid_request_error",
            code="invalid_request",
        ) from None


async def run_message(
    backend: Backend,
    upstream_names: Mapping[str, str],
    body: bytes,
    job: JobEnvelope,
    sender: FrameSender,
    *,
    started: Started,
) -> Usage:
    """Serve one Messages job through `backend.chat`; answers the usage. A streamed job
    folds the backend's chunks into events as they come; a whole one asks the backend for
    its whole reply (`ReplyTo.whole`, as chat does) and translates that once."""
    request = read_request(body, "message")
    chat, chat_body = chat_of(request)
    stream = bool(request.get("stream"))
    fold = MessageEvents(f"msg_{job.id}", request["model"])
    reply = ReplyTo(f"chatcmpl-{job.id}", chat.model, int(time.time()), True, whole=not stream)
    call = Call.of(chat, upstream_names.get(chat.model, chat.model), reply, chat_body)
    outs = backend.chat(call)
    if stream:
        usage = await _stream(outs, fold, sender, started)  # its events end with the closing
    else:
        usage = await _whole(outs, fold, started)
        fold.finish(usage)
    done = Done(usage=usage, finish_reason=fold.finish_reason)
    if not stream:  # a stream's client has the events; a whole reply the Message
        done.body = msgspec.Raw(_encoder.encode(fold.message))
    await sender.done(done)
    return usage


async def _stream(
    outs: AsyncIterator[Out], fold: MessageEvents, sender: FrameSender, started: Started
) -> Usage:
    """The events of the chunks, sent whenever the backend is about to wait (`drive`: what
    it gave at once shares a frame, as chat's chunks do), held back until the first output;
    the closing events go with the last ones."""
    ready = fold.start()
    begun = False
    usage: Usage | None = None

    async def take(out: Out) -> None:
        nonlocal usage, begun
        if out.usage is not None:
            usage = out.usage
        if out.chunk:
            events = fold.feed(out.chunk)
            if events:
                if not begun:
                    begun = True
                    await started(True)
                ready.extend(events)

    async def end() -> None:
        nonlocal usage
        usage = usage or _counted(fold.output_text())
        ready.extend(fold.finish(usage))

    async def flush() -> None:
        if begun and ready:
            batch = ready.copy()
            ready.clear()
            await sender.chunks(batch)

    await drive(outs, take, flush, end=end)
    if ready:  # no output at all: the opening and closing events together
        await sender.chunks(ready)
    assert usage is not None
    return usage


async def _whole(outs: AsyncIterator[Out], fold: MessageEvents, started: Started) -> Usage:
    """The backend's whole chat completion (or its chunks, folded) into `fold`."""
    usage: Usage | None = None
    async for out in outs:
        if out.usage is not None:
            usage = out.usage
        if out.chunk:
            fold.feed(out.chunk)
        if out.body:
            await started(False)
            fold.whole(_decoder.decode(out.body))
    return usage or _counted(fold.output_text())


def _counted(text: str) -> Usage:
    """The worker's own count when the backend reported no usage."""
    n = count_tokens(text)
    return Usage(0, n, n)
