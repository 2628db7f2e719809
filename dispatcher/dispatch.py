"""Submitting a job and following its reply frames until it ends.

`JobRun.events()` turns the frames of DESIGN.md into what the api relays: chunk bytes, then
one `Done` or `Failed`. Every wait has a bound: the job's deadline while it is queued, and
three ping intervals of silence once a worker has it. A worker that dies before its first
chunk has not acked the job, so JetStream delivers it again: we wait for that redelivery
(bounded by ack_wait) instead of failing the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from dispatcher.inbox import ReplyInbox
from dispatcher.jobs import JobSpec
from schemas import frames, names
from schemas.frames import Done, Failed, failure

Event = bytes | Done | Failed


class DispatchError(Exception):
    """The job could not be queued; carries the HTTP status for the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class JobRun:
    """One submitted job, from the api's side."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        spec: JobSpec,
        queue: asyncio.Queue[Msg],
    ) -> None:
        self._dispatcher = dispatcher
        self.spec = spec
        self._queue = queue
        self.finished = False
        self.worker: str | None = None
        self.accepted_at: float | None = None
        self.first_chunk_at: float | None = None

    async def events(self) -> AsyncGenerator[Event, None]:
        d = self._dispatcher
        silence = d.ping_interval * 3
        deadline = self.spec.deadline_ms / 1000
        accepted = relayed = False
        expected_seq = 0
        redelivery_by: float | None = None
        try:
            while True:
                now = time.time()
                left = deadline - now
                if left <= 0:
                    yield failure(504, "the job's deadline passed", "timeout", "deadline_exceeded")
                    return
                wait = left
                if accepted:
                    wait = min(wait, silence)
                elif redelivery_by is not None:
                    wait = min(wait, max(redelivery_by - now, 0.0))
                try:
                    async with asyncio.timeout(wait):
                        msg = await self._queue.get()
                except TimeoutError:
                    if time.time() >= deadline:
                        continue
                    if accepted and not relayed:
                        # Worker lost before its first chunk: JetStream redelivers the job.
                        accepted = False
                        redelivery_by = time.time() + d.ack_wait + silence
                        continue
                    lost = "the worker stopped responding" if accepted else "the job was lost"
                    yield failure(502, lost, "upstream_error", "worker_lost")
                    return
                headers = msg.headers or {}
                kind = headers.get(names.H_FRAME)
                seq = int(headers.get(names.H_SEQ, "-1"))
                if kind == frames.ACCEPTED:
                    accepted, expected_seq, redelivery_by = True, seq + 1, None
                    self.worker = headers.get(names.H_WORKER)
                    self.accepted_at = time.monotonic()
                    continue
                if seq != expected_seq or not accepted:
                    yield failure(502, "reply frames were lost", "upstream_error", "frames_lost")
                    return
                expected_seq += 1
                if kind == frames.CHUNK:
                    if not relayed:
                        relayed = True
                        self.first_chunk_at = time.monotonic()
                    yield msg.data
                elif kind == frames.PING:
                    continue
                else:
                    frame = frames.frame_decoder.decode(msg.data)
                    if isinstance(frame, Done | Failed):
                        self.finished = True
                        yield frame
                        return
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening; if the job did not end by itself, tell its worker to stop."""
        d = self._dispatcher
        d.inbox.close(self.spec.job_id)
        if not self.finished:
            self.finished = True
            await d.cancel(self.spec.job_id)


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        inbox: ReplyInbox,
        ping_interval: float,
        ack_wait: float,
        publish_timeout: float = 2.0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.inbox = inbox
        self.ping_interval = ping_interval
        self.ack_wait = ack_wait
        self.publish_timeout = publish_timeout

    def max_body(self) -> int:
        """Largest body that fits one NATS message, leaving room for the headers."""
        return int(self.nc.max_payload) - 1024

    async def submit(self, spec: JobSpec) -> JobRun:
        if len(spec.body) > self.max_body():
            raise DispatchError(413, "request too large for the job queue", "request_too_large")
        reply = self.inbox.subject(spec.job_id)
        queue = self.inbox.open(spec.job_id)
        try:
            await self.js.publish(
                spec.subject,
                spec.body,
                timeout=self.publish_timeout,
                headers=spec.headers(reply),
            )
        except MaxPayloadError as exc:
            self.inbox.close(spec.job_id)
            raise DispatchError(
                413, "request too large for the job queue", "request_too_large"
            ) from exc
        except (TimeoutError, NoRespondersError, NoStreamResponseError, NatsTimeoutError) as exc:
            self.inbox.close(spec.job_id)
            raise DispatchError(503, "the job queue is unavailable", "queue_unavailable") from exc
        except Exception as exc:
            self.inbox.close(spec.job_id)
            raise DispatchError(
                503, f"the job queue is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from exc
        return JobRun(self, spec, queue)

    async def cancel(self, job_id: str) -> None:
        if self.nc.is_connected:
            await self.nc.publish(names.cancel_subject(job_id))
