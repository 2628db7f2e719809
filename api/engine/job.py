"""One queued job of one attempt until it ends: its events as a JSON body or an SSE stream,
and its reservation released exactly once however it ends. Chat uses it as it is; the
Responses API's `ResponseRun` extends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmq.api.engine.serving import Serving
from llmq.api.errors import ApiError, error_bytes, failed_response, public_failure
from llmq.api.fair_share import Ticket
from llmq.api.request_record import RequestRecord
from llmq.api.sse import DONE, SSEResponse, event
from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.admission import JobUsage, Reservation
from llmq.schemas.frames import CHUNK_SEPARATOR, Done, Failed
from llmq.schemas.usage import cache_counts

Event = bytes | Done | Failed
J = TypeVar("J", bound="QueuedJob")


class QueuedJob:
    """One queued job until it ends: relays its events and releases its reservation once."""

    def __init__(
        self,
        serving: Serving,
        run: JobRun,
        reservation: Reservation,
        record: RequestRecord,
        prompt_estimate: int,
        *,
        ticket: Ticket,
    ) -> None:
        self.serving = serving
        self.ticket = ticket
        self.run = run
        self.reservation = reservation
        self.record = record
        self.prompt_estimate = prompt_estimate
        self.relayed = 0
        self.settled = False
        self.response: SSEResponse | None = None
        """The stream's response while it is open (cut when its client stops reading)."""
        self.drain: asyncio.TimerHandle | None = None
        """The cut of a stream nobody reads, while it waits for `stream_drain_timeout`."""
        self.cache = ""
        """'join': the job is another request's, followed (booked as cached)."""
        self.cache_price = 0.0

    @classmethod
    def maker(
        cls: type[J], serving: Serving, record: RequestRecord, prompt_estimate: int
    ) -> Callable[[JobRun, Reservation, Ticket], J]:
        """An attempt's `Ask.make_job`: this class over the run, reservation and ticket it
        gets (its own job's, or a cached or joined answer's)."""

        def make(run: JobRun, reservation: Reservation, ticket: Ticket) -> J:
            return cls(serving, run, reservation, record, prompt_estimate, ticket=ticket)

        return make

    def settle(
        self, status: int, done: Done | None = None, code: str | None = None, observe: bool = True
    ) -> None:
        """End the job's reservation once; `observe`: the request ends with it (False when
        it moves on to a fallback model)."""
        if self.settled:
            return
        self.settled = True
        self.ticket.leave()
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
        cached, written = cache_counts(done.usage) if done is not None else (0, 0)
        usage = JobUsage(
            record.prompt_tokens,
            record.completion_tokens,
            failed=done is None,
            cached_tokens=cached,
            cache_write_tokens=written,
            cache=self.cache if done is not None else "",
            cache_price=self.cache_price,
        )
        self.serving.reservations.release_later(self.reservation, usage)
        if observe:
            self.serving.observe(record)

    async def outcome(self) -> Done | Failed | None:
        """A whole (not streamed) job's end; None when it ended without one."""
        events = self.run.events()
        try:
            async for ev in events:
                if isinstance(ev, Done | Failed):
                    return ev
            return None
        except BaseException:
            self.settle(499, code="client_closed")
            raise
        finally:
            await events.aclose()

    def respond(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        if isinstance(ev, Failed):
            self.settle(ev.status, code=ev.error.code)
            return failed_response(public_failure(ev, self.record.job_id), headers)
        if ev is None or not ev.body:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response")
        return SettledAfter(bytes(ev.body), headers, lambda: self.settle(200, ev))

    async def answer(self, ev: Done | Failed | None, headers: dict[str, str]) -> Response:
        """The non-streamed response (the Responses API stores it first)."""
        return self.respond(ev, headers)

    async def first(self) -> tuple[Event, AsyncGenerator[Event, None]]:
        """A stream's first event (a chunk, or how it ended before one) and the rest."""
        events = self.run.events()
        try:
            return await events.__anext__(), events
        except StopAsyncIteration:
            self.settle(502, code="empty_response")
            raise ApiError(502, "the job ended without a result", "empty_response") from None
        except BaseException:
            self.settle(499, code="client_closed")
            await events.aclose()
            raise

    async def stream(
        self, first: Event, events: AsyncGenerator[Event, None], headers: dict[str, str]
    ) -> Response:
        if isinstance(first, Failed):
            await events.aclose()
            self.settle(first.status, code=first.error.code)
            return failed_response(public_failure(first, self.record.job_id), headers)
        self.response = SSEResponse(self._relay(first, events), headers)
        self.run.mailbox.on_overflow = self._unread
        return self.response

    def _unread(self) -> None:
        """The client stopped reading and the job's buffer filled (the inbox cancelled the
        job): book what was generated now; the connection is closed unless the client
        reads what is buffered within `stream_drain_timeout`."""
        self.relayed += self.run.mailbox.buffered
        self.settle(408, code="stream_not_read")
        loop = asyncio.get_running_loop()
        self.drain = loop.call_later(
            self.serving.rt.settings.storage.stream_drain_timeout, self._cut
        )

    def stream_ended(self) -> None:
        """The relay ended (the client read on, or left): no cut, no reference kept."""
        self.response = None
        if self.drain is not None:
            self.drain.cancel()
            self.drain = None

    def _cut(self) -> None:
        response, self.response, self.drain = self.response, None, None
        if response is not None:
            response.cut()

    async def _relay(
        self, first: Event, events: AsyncGenerator[Event, None]
    ) -> AsyncIterator[bytes]:
        """The stream's bytes: each chunk frame as the feature shows it (`_chunk`), then its
        end (`_failed_event` or `_ended`, and `_tail`); the reservation settled once however
        the stream ends, the client's leaving included."""
        rt = self.serving.rt
        rt.open_streams += 1
        try:
            ev: Event = first
            while True:
                if isinstance(ev, bytes):
                    data = self._chunk(ev)
                    if data:
                        yield data
                elif isinstance(ev, Failed):
                    self.settle(ev.status, code=ev.error.code)
                    yield await self._failed_event(ev)
                    break
                else:
                    self.settle(200, ev)
                    await self._ended(ev)
                    break
                try:
                    ev = await events.__anext__()
                except StopAsyncIteration:
                    break
            tail = self._tail()
            if tail:
                yield tail
        finally:
            rt.open_streams -= 1
            self.stream_ended()
            self.settle(499, code="client_closed")
            await events.aclose()

    def _chunk(self, data: bytes) -> bytes:
        """A chunk frame as the client reads it (empty: nothing now), counted in `relayed`.
        Chat: a frame may carry several chunks (`Llmq-Chunks`), one estimated token each."""
        self.relayed += data.count(CHUNK_SEPARATOR) + 1
        return b"data: " + data + b"\n\n"

    async def _failed_event(self, frame: Failed) -> bytes:
        """How a stream that began ends when its job fails."""
        return event(error_bytes(public_failure(frame, self.record.job_id).error))

    async def _ended(self, done: Done) -> None:
        """The job ended well, before the client reads the stream's end."""

    def _tail(self) -> bytes:
        """The stream's last bytes (chat: `data: [DONE]`)."""
        return DONE


class SettledAfter(Response):
    """A whole JSON answer whose job is settled (metrics, the request log, the release of
    its reservation) once its bytes are handed to the server, not before: the client has
    its answer while the api books it. A send that fails or is cancelled settles too."""

    def __init__(self, body: bytes, headers: dict[str, str], settle: Callable[[], None]) -> None:
        super().__init__(body, media_type="application/json", headers=headers)
        self._settle = settle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._settle()
