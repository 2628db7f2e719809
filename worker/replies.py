"""Sending reply frames to the api: numbered, on core NATS, never flushed per frame (a
publisher that runs ahead of NATS waits: `worker.outbound`).

The final frame (`done`/`error`) of an async or batch job (its reply is an outcome subject,
captured by LLMQ_OUTCOMES) is the one exception: it is the job's result and nobody waits for
it live, so it goes through JetStream with an ack, retried through leader elections with a
stable `Nats-Msg-Id` until the job's deadline (core NATS would drop it unseen).

Chunks go out in natural batches: `drive` hands the runner every `Out` the backend can
produce without waiting (all the lines one read from the upstream brought) and flushes them
the moment the backend is about to wait, so one frame carries them all and no chunk ever
waits for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

from nats.aio.client import Client

from llmq.dispatcher.publish import DURABLE_RETRY, publish_job
from llmq.schemas import frames, names
from llmq.schemas.frames import Accepted, Done, Failed, frame_encoder, join_chunks, joinable
from llmq.worker.outbound import outbound

log = logging.getLogger(__name__)

T = TypeVar("T")

FRAME_SHARE = 4
"""A frame of several chunks stays under 1/FRAME_SHARE of the server's max payload."""

FINAL_ACK_TIMEOUT = 2.0
"""Seconds one JetStream publish of a final frame waits for its ack before it is retried."""


OUTCOME_REPLY = names.OUTCOME_PREFIX + "."


class FrameSender:
    """The frames of one job attempt, numbered from 0 (`accepted`) so the api sees any gap."""

    __slots__ = (
        "_attempt",
        "_deadline_ms",
        "_durable",
        "_nc",
        "_out",
        "_reply",
        "_seq",
        "frames_sent",
        "last_sent",
        "worker_id",
    )

    def __init__(self, nc: Client, reply: str, worker_id: str, deadline_ms: int = 0) -> None:
        """`deadline_ms` (the job's `Llmq-Deadline`) bounds the retries of a durable final
        frame; without one they last `DURABLE_RETRY` seconds."""
        self._nc = nc
        self._out = outbound(nc)
        self._reply = reply
        self._seq = 0
        self._durable = reply.startswith(OUTCOME_REPLY)
        self._deadline_ms = deadline_ms
        self._attempt = 1
        self.worker_id = worker_id
        self.last_sent = time.monotonic()
        self.frames_sent = 0

    async def _send(
        self, kind: str, data: bytes, extra: dict[str, str] | None = None, *, small: bool = False
    ) -> None:
        """Number the frame and hand it to nats-py with no wait in between (nats-py queues a
        publish before its first await), after any backpressure wait: a ping sent while a
        chunk waits is numbered before it, never after, so the api sees no gap."""
        await self._out.ready(small=small)
        headers = {names.H_FRAME: kind, names.H_SEQ: str(self._seq)}
        if self._attempt > 1:
            headers[names.H_ATTEMPT] = str(self._attempt)
        if extra:
            headers.update(extra)
        self._seq += 1
        self.frames_sent += 1
        self.last_sent = time.monotonic()
        await self._nc.publish(self._reply, data, headers=headers)

    async def accepted(self, attempt: int) -> None:
        self._attempt = attempt
        body = frame_encoder.encode(Accepted(worker=self.worker_id, attempt=attempt))
        await self._send(frames.ACCEPTED, body, {names.H_WORKER: self.worker_id})

    async def chunk(self, data: bytes) -> None:
        await self._send(frames.CHUNK, data)

    async def chunks(self, batch: list[bytes]) -> None:
        """Several chunks in as few frames as they fit (one, normally), in order."""
        limit = max(int(getattr(self._nc, "max_payload", 0) or 0) // FRAME_SHARE, 4096)
        if len(batch) > 1:  # the usual case at once: every chunk joinable and all in one frame
            joined = join_chunks(batch)
            if len(joined) <= limit and joined.count(b"\n") == 2 * (len(batch) - 1):
                await self._send(frames.CHUNK, joined, {names.H_CHUNKS: str(len(batch))})
                return
        group: list[bytes] = []
        size = 0
        for data in batch:
            if group and (size + len(data) > limit or not joinable(data)):
                await self._send_group(group)
                group, size = [], 0
            group.append(data)
            size += len(data) + len(frames.CHUNK_SEPARATOR)
            if not joinable(data):
                await self._send_group(group)
                group, size = [], 0
        if group:
            await self._send_group(group)

    async def _send_group(self, group: list[bytes]) -> None:
        if len(group) == 1:
            await self._send(frames.CHUNK, group[0])
        else:
            await self._send(frames.CHUNK, join_chunks(group), {names.H_CHUNKS: str(len(group))})

    async def ping(self) -> None:
        """A sign of life: not held behind other frames' backpressure (`Outbound.ready`)."""
        await self._send(frames.PING, b"", small=True)

    async def requeued(self, attempt: int) -> None:
        """Tell the api the job was given back to the queue (it keeps waiting for it)."""
        await self._send(frames.PING, b"", {names.H_REQUEUED: str(attempt)})

    async def done(self, frame: Done) -> None:
        if self._durable:
            await self._send_final(frames.DONE, frame_encoder.encode(frame))
        else:
            await self._send(frames.DONE, frame_encoder.encode(frame))
            await _let_out()

    async def failed(self, frame: Failed) -> None:
        if self._durable:
            await self._send_final(frames.ERROR, frame_encoder.encode(frame))
        else:
            await self._send(frames.ERROR, frame_encoder.encode(frame))
            await _let_out()

    async def _send_final(self, kind: str, data: bytes) -> None:
        """The result of an async/batch job: acked by LLMQ_OUTCOMES, retried with one
        `Nats-Msg-Id` per attempt (never stored twice) until the job's deadline. If it
        still fails the job's result is lost: logged, not raised, so the runner acks the
        message as usual (past the deadline a redelivery would be dropped unseen, and the
        api's sweeper ends the job `job_expired`); nothing waits on it live."""
        job_id = self._reply.rsplit(".", 1)[-1]
        headers = {
            names.H_FRAME: kind,
            names.H_SEQ: str(self._seq),
            "Nats-Msg-Id": f"{job_id}:{self._attempt}:final",
        }
        self._seq += 1
        self.frames_sent += 1
        self.last_sent = time.monotonic()
        until = self._deadline_ms / 1000 if self._deadline_ms else time.time() + DURABLE_RETRY
        js = self._nc.jetstream()
        try:
            await publish_job(js, self._reply, data, headers, FINAL_ACK_TIMEOUT, until=until)
        except Exception as exc:
            log.error(
                "the result of job %s was not stored (%s: %s); it ends at its deadline",
                job_id,
                type(exc).__name__,
                exc,
            )


async def _let_out() -> None:
    """Yield once, so nats-py's flusher (woken by the publish) writes the final frame the
    client waits on before the job's ack, usage report and metrics run; frames other jobs
    queued meanwhile still go out in the same write."""
    await asyncio.sleep(0)


async def drive(
    items: AsyncIterator[T],
    take: Callable[[T], Awaitable[None]],
    flush: Callable[[], Awaitable[None]],
    *,
    end: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Await `take` for each item of `items`, and `flush` whenever producing the next one
    would wait (on the upstream's socket, a timer, anything) and once at the end, after
    `end` (what it adds goes out with the last items).

    Each step of the producer is run by hand up to its first suspension: if it finishes
    without one, its item was ready; if it suspends, `flush` runs before the task waits with
    it, so what was taken goes out before any waiting, never after.
    """
    iterator = aiter(items)
    while True:
        step = anext(iterator)
        try:
            signal = step.send(None)  # type: ignore[attr-defined]
        except StopIteration as ready:
            await take(ready.value)
            continue
        except StopAsyncIteration:
            break
        try:
            await flush()
        except BaseException as error:
            # Unwind the producer as if its wait had failed, then report the failure.
            with contextlib.suppress(StopAsyncIteration):
                await _Rest(step, signal, error)
            raise
        try:
            item = await _Rest(step, signal)
        except StopAsyncIteration:
            break
        await take(item)
    if end is not None:
        await end()
    await flush()


class _Rest:
    """Awaiting this finishes a producer step that already ran up to its first wait: the
    wait is handed to the task as a plain `await` would, and the step's item returned.

    With `error`, the step is unwound instead (the error is thrown in at its wait); whatever
    it then raises other than the error itself propagates, else the caller re-raises."""

    __slots__ = ("_error", "_signal", "_step")

    def __init__(self, step: Any, signal: Any, error: BaseException | None = None) -> None:
        self._step, self._signal, self._error = step, signal, error

    def __await__(self) -> Generator[Any, Any, Any]:
        step, signal = self._step, self._signal
        if self._error is not None:
            try:
                signal = step.throw(self._error)
            except (StopIteration, StopAsyncIteration):
                return None
            except BaseException as raised:
                if raised is self._error:
                    return None
                raise
        while True:
            try:
                sent = yield signal
            except GeneratorExit:
                step.close()
                raise
            except BaseException as thrown:  # the task's cancellation, delivered to the step
                try:
                    signal = step.throw(thrown)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    signal = step.send(sent)
                except StopIteration as done:
                    return done.value
