"""Relaying one interactive Responses job: its events as named SSE events (bytes as the
worker made them, with an `event:` line), or its final Response as one JSON body.

The job's life — its reservation released exactly once with the real usage, its fair-share
place, the request record — is the chat relay's (`llmq.api.engine.job.QueuedJob`); only
what the client sees differs. The final Response is handed to `on_final` (storage, the
conversation) before the client sees the end — the JSON body, or the held-back terminal
event of a stream — so the client may chain its next request on this one at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import msgspec
from starlette.responses import Response

from llmq.api.engine.job import QueuedJob
from llmq.api.engine.serving import Serving
from llmq.api.errors import ApiError, failed_response, public_failure
from llmq.api.fair_share import Ticket
from llmq.api.request_record import RequestRecord
from llmq.api.sse import named_event
from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.admission import Reservation
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


class ResponseRun(QueuedJob):
    def __init__(
        self,
        serving: Serving,
        run: JobRun,
        reservation: Reservation,
        record: RequestRecord,
        prompt_estimate: int,
        ticket: Ticket,
        on_final: OnFinal,
    ) -> None:
        super().__init__(serving, run, reservation, record, prompt_estimate, ticket)
        self.on_final = on_final

    async def _final(self, done: Done) -> bytes:
        body = bytes(done.body) if done.body else b""
        if body:
            try:
                await self.on_final(body)
            except Exception as exc:  # the client still gets its answer
                log.warning("could not store response %s: %s", self.record.job_id, exc)
        return body

    async def answer(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        """The whole (not streamed) response, from the job's end (`outcome`)."""
        if isinstance(ev, Failed):
            self.settle(ev.status, code=ev.error.code)
            return failed_response(public_failure(ev, self.record.job_id), headers)
        if ev is None:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response")
        self.settle(200, ev)
        body = await self._final(ev)
        if not body:
            raise ApiError(502, "the worker sent no response body", "empty_response")
        return Response(body, media_type="application/json", headers=headers)

    async def _relay(
        self, first: Event, events: AsyncGenerator[Event, None]
    ) -> AsyncIterator[bytes]:
        rt = self.serving.rt
        rt.open_streams += 1
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
            rt.open_streams -= 1
            self.settle(499, code="client_closed")
            await events.aclose()

    def _error_event(self, frame: Failed) -> bytes:
        error = public_failure(frame, self.record.job_id).error
        return _encoder.encode(
            {
                "type": "error",
                "code": error.code or error.type,
                "message": error.message,
                "param": error.param,
                "sequence_number": self.relayed,
            }
        )
