"""Relaying one interactive Responses job: its events as named SSE events (bytes as the
worker made them, with an `event:` line), or its final Response as one JSON body.

The final Response is handed to `on_final` (storage, the conversation) before the client
sees the end — the JSON body, or the held-back terminal event of a stream — so the client
may chain its next request on this one at once. The reservation is released exactly once
with the real usage, however the job ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import msgspec
from starlette.responses import Response

from llmq.api.errors import ApiError, error_response
from llmq.api.reservations import Reservations
from llmq.api.serving import Observer, RequestRecord
from llmq.api.sse import SSEResponse, named_event
from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.admission import JobUsage, Reservation
from llmq.schemas.frames import Done, Failed

log = logging.getLogger(__name__)

Event = bytes | Done | Failed
OnFinal = Callable[[bytes], Awaitable[None]]

TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})


class _Typed(msgspec.Struct):
    type: str = ""


_typed = msgspec.json.Decoder(_Typed)
_encoder = msgspec.json.Encoder()


def event_type(data: bytes) -> bytes:
    try:
        return _typed.decode(data).type.encode()
    except msgspec.DecodeError:
        return b"message"


class ResponseRun:
    def __init__(
        self,
        run: JobRun,
        reservations: Reservations,
        reservation: Reservation,
        record: RequestRecord,
        prompt_estimate: int,
        observers: list[Observer],
        on_final: OnFinal,
    ) -> None:
        self.run = run
        self.reservations = reservations
        self.reservation = reservation
        self.record = record
        self.prompt_estimate = prompt_estimate
        self.observers = observers
        self.on_final = on_final
        self.relayed = 0
        self.settled = False

    def settle(self, status: int, done: Done | None = None, code: str | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        record = self.record
        record.status, record.error_code, record.worker = status, code, self.run.worker
        if self.run.first_chunk_at is not None:
            record.ttft = self.run.first_chunk_at - record.started
        if done is not None:
            record.prompt_tokens = done.usage.prompt_tokens
            record.completion_tokens = done.usage.completion_tokens
        else:
            record.prompt_tokens = self.prompt_estimate if self.run.worker else 0
            record.completion_tokens = self.relayed
        usage = JobUsage(record.prompt_tokens, record.completion_tokens, failed=done is None)
        self.reservations.release_later(self.reservation, usage)
        record.latency = time.monotonic() - record.started
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.exception("request observer failed")

    async def _final(self, done: Done) -> bytes:
        body = bytes(done.body) if done.body else b""
        if body:
            try:
                await self.on_final(body)
            except Exception as exc:  # the client still gets its answer
                log.warning("could not store response %s: %s", self.record.job_id, exc)
        return body

    async def collect(self, headers: dict[str, str]) -> Response:
        try:
            async for ev in self.run.events():
                if isinstance(ev, Done):
                    self.settle(200, ev)
                    body = await self._final(ev)
                    if not body:
                        raise ApiError(502, "the worker sent no response body", "empty_response")
                    return Response(body, media_type="application/json", headers=headers)
                if isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    return failed_response(ev, headers)
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response")
        finally:
            self.settle(499, code="client_closed")

    async def stream(self, headers: dict[str, str]) -> Response:
        events = self.run.events()
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response") from None
        except BaseException:
            self.settle(499, code="client_closed")
            raise
        if isinstance(first, Failed):
            await events.aclose()
            self.settle(first.status, code=first.error.code)
            return failed_response(first, headers)
        return SSEResponse(self._relay(first, events), headers)

    async def _relay(
        self, first: Event, events: AsyncGenerator[Event, None]
    ) -> AsyncIterator[bytes]:
        held: bytes | None = None
        try:
            ev: Event = first
            while True:
                if isinstance(ev, bytes):
                    name = event_type(ev)
                    self.relayed += 1
                    frame = named_event(name, ev)
                    if name in TERMINAL:
                        held = frame
                    else:
                        yield frame
                elif isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    yield named_event(b"error", self._error_event(ev))
                    break
                else:
                    self.settle(200, ev)
                    await self._final(ev)
                    break
                try:
                    ev = await events.__anext__()
                except StopAsyncIteration:
                    break
            if held is not None:
                yield held
        finally:
            self.settle(499, code="client_closed")
            await events.aclose()

    def _error_event(self, frame: Failed) -> bytes:
        error = frame.error
        return _encoder.encode(
            {
                "type": "error",
                "code": error.code or error.type,
                "message": error.message,
                "param": error.param,
                "sequence_number": self.relayed,
            }
        )


def failed_response(frame: Failed, headers: dict[str, str]) -> Response:
    if frame.retry_after is not None:
        headers = {**headers, "retry-after": str(max(1, round(frame.retry_after)))}
    return error_response(frame.status, frame.error, headers)
