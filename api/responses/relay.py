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
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

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


class ResponseEnd(Protocol):
    """What the serving module does with a response's end (store it, append it)."""

    async def final(self, body: bytes) -> None:
        """The final Response of a job that ended well."""

    async def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        """The failed Response (stored, with `error`) of a job that failed."""


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
        *,
        ticket: Ticket,
        keeper: ResponseEnd,
    ) -> None:
        super().__init__(serving, run, reservation, record, prompt_estimate, ticket=ticket)
        self.keeper = keeper

    async def _final(self, done: Done) -> bytes:
        body = bytes(done.body) if done.body else b""
        if body:
            try:
                await self.keeper.final(body)
            except Exception as exc:  # the client still gets its answer
                log.warning("could not store response %s: %s", self.record.job_id, exc)
        return body

    async def _failed(self, frame: Failed) -> dict[str, Any]:
        """The failed Response of `frame` (stored when it may be), as the client sees it."""
        error = public_failure(frame, self.record.job_id).error
        body = {"code": failure_code(frame.status), "message": error.message}
        try:
            return await self.keeper.failed(body)
        except Exception as exc:  # the client still learns that it failed
            log.warning("could not store failed response %s: %s", self.record.job_id, exc)
            return {"status": "failed", "error": body}

    async def answer(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        """The whole (not streamed) response, from the job's end (`outcome`)."""
        if isinstance(ev, Failed):
            self.settle(ev.status, code=ev.error.code)
            if ev.status >= 500:  # a response that failed, not a request refused
                await self._failed(ev)
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
                    yield named_event(b"response.failed", await self._failed_event(ev))
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

    async def _failed_event(self, frame: Failed) -> bytes:
        """`response.failed`: how a stream that began ends when its job fails."""
        response = await self._failed(frame)
        event = {"type": "response.failed", "sequence_number": self.relayed, "response": response}
        return _encoder.encode(event)

    async def stream(
        self, first: Event, events: AsyncGenerator[Event, None], headers: dict[str, str]
    ) -> Response:
        if isinstance(first, Failed) and first.status >= 500:
            await self._failed(first)
        return await super().stream(first, events, headers)


def failure_code(status: int) -> str:
    """A failed Response's `error.code` (OpenAI's ResponseError codes) for a job's status."""
    if status == 429:
        return "rate_limit_exceeded"
    return "server_error" if status >= 500 else "invalid_prompt"
