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
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import msgspec
from starlette.responses import Response

from llmq.api.engine.job import QueuedJob
from llmq.api.errors import ApiError, failed_response, public_failure
from llmq.api.responses.keeper import NoKeeper
from llmq.api.sse import named_event
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
NO_KEEPER: ResponseEnd = NoKeeper()


def event_type(data: bytes) -> bytes:
    try:
        return _typed.decode(data).type.encode()
    except msgspec.DecodeError:
        return b"message"


class ResponseRun(QueuedJob):
    """A `response` job's stream and body; `keeper` (set by the serving module for a job of
    its own; a cached or joined answer keeps nothing) takes the final Response."""

    keeper: ResponseEnd = NO_KEEPER
    _held: bytes = b""
    """The stream's terminal event, held back until the Response is kept."""

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

    def _chunk(self, data: bytes) -> bytes:
        name = event_type(data)
        self.relayed += 1
        frame = named_event(name, data)
        if name in TERMINAL:
            self._held = frame
            return b""
        return frame

    async def _failed_event(self, frame: Failed) -> bytes:
        """`response.failed`: how a stream that began ends when its job fails."""
        response = await self._failed(frame)
        event = {"type": "response.failed", "sequence_number": self.relayed, "response": response}
        return named_event(b"response.failed", _encoder.encode(event))

    async def _ended(self, done: Done) -> None:
        await self._final(done)

    def _tail(self) -> bytes:
        return self._held

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
