"""Submitting a job and following its reply frames until it ends.

`JobRun.events()` turns the reply frames (docs/protocol.md, "Reply frames") into what the api
relays: chunk bytes, then one `Done` or `Failed`. What it decides — every wait's bound, the
first-token deadline, missed pings, sequence gaps, the end — is `reply_machine.ReplyMachine`,
pure and table-tested; this module waits and relays. Until its first chunk a job is not acked,
so a worker that dies (silence) or gives it back (a ping marked `Llmq-Requeued`) leaves it
queued for the next worker, still bounded by the deadline; when JetStream gives up on it (its
max-deliveries advisory) the client hears at once, and so it does when a restarted
nats-server lost it (no worker answers within three ping intervals of finding it gone). A
silence is judged only after the api has read what NATS held for it (`CHECK`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError

from llmq.dispatcher.connection import unsubscribe
from llmq.dispatcher.inbox import Mailbox, ReplyInbox, Signal
from llmq.dispatcher.jobs import JobSpec
from llmq.dispatcher.publish import publish_to_inbox, store_full
from llmq.dispatcher.reply_machine import (
    CHECK,
    DECODE,
    FIRST_CHUNK,
    GIVEN_BACK,
    RELAY,
    RESUMED,
    TAKEN,
    ReplyMachine,
)
from llmq.schemas import frames, names
from llmq.schemas.envelope import EnvelopeError, JobEnvelope
from llmq.schemas.frames import Done, Failed

Event = bytes | Done | Failed
_NO_HEADERS: dict[str, str] = {}


class _MaxDeliveries(msgspec.Struct):
    stream_seq: int


_advisory_decoder = msgspec.json.Decoder(_MaxDeliveries)


class DispatchError(Exception):
    """The job could not be queued; carries the HTTP status for the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class JobRun:
    """One submitted job, from the api's side (slots: one is held per open stream)."""

    __slots__ = (
        "_dispatcher",
        "_mailbox",
        "accepted_at",
        "finished",
        "first_chunk_at",
        "on_taken",
        "seq",
        "spec",
        "taken",
        "worker",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        spec: JobSpec,
        mailbox: Mailbox,
    ) -> None:
        self._dispatcher = dispatcher
        self.spec = spec
        self._mailbox = mailbox
        self.seq = 0
        """The job's sequence in its stream, as the publish ack gave it."""
        self.finished = False
        self.worker: str | None = None
        self.accepted_at: float | None = None
        self.first_chunk_at: float | None = None
        self.on_taken: Callable[[], None] | None = None
        """Called when a worker first takes the job (the api's fair share frees a place)."""
        self.taken = False
        """A worker holds the job now (accepted, not given back): the api's fallback
        routing leaves such a job alone."""

    async def events(self) -> AsyncGenerator[Event, None]:
        """Chunk bytes, then one `Done` or `Failed`; `ReplyMachine` decides, this relays."""
        spec = self.spec
        deadline = spec.deadline_ms / 1000
        machine = ReplyMachine(
            deadline, spec.end_ms / 1000, self._dispatcher.ping_interval * 3, spec.stream
        )
        mailbox = self._mailbox
        try:
            while True:
                wait = machine.wait(time.time())
                if isinstance(wait, Failed):
                    yield wait
                    return
                msg = await mailbox.get(wait)
                if msg is None:
                    action = machine.tick()
                elif isinstance(msg, Signal):
                    action = machine.signal(msg, time.time())
                else:
                    headers = msg.headers or _NO_HEADERS
                    action = machine.frame(
                        headers.get(names.H_FRAME),
                        int(headers.get(names.H_SEQ, "-1")),
                        names.H_REQUEUED in headers,
                        int(headers.get(names.H_ATTEMPT, "1")),
                    )
                    if action is RELAY:
                        yield msg.data
                        continue
                    if action is FIRST_CHUNK:
                        self.first_chunk_at, self.taken = time.monotonic(), True
                        yield msg.data
                        continue
                    if action is DECODE:
                        frame = frames.frame_decoder.decode(msg.data)
                        if isinstance(frame, Done | Failed):
                            self.finished = True
                            yield frame
                            return
                        continue
                    if action is TAKEN:
                        self._taken(headers.get(names.H_WORKER))
                        continue
                if action is CHECK:
                    await self._dispatcher.inbox.caught_up(machine.left(time.time()))
                elif action is GIVEN_BACK:
                    self.taken = False
                elif action is RESUMED:
                    self.taken = True
                elif isinstance(action, Failed):
                    yield action
                    return
        finally:
            await self.close()

    @property
    def mailbox(self) -> Mailbox:
        """The job's frames as they wait to be read (its bound, its overflow hook)."""
        return self._mailbox

    def _taken(self, worker: str | None) -> None:
        self.taken = True
        if self.on_taken is not None and self.accepted_at is None:
            self.on_taken()  # once: a redelivered job's next worker takes no second place
        self.worker = worker
        self.accepted_at = time.monotonic()

    async def close(self) -> None:
        """Stop listening; if the job did not end by itself, tell its worker to stop."""
        d = self._dispatcher
        d.inbox.close(self.spec.job_id)
        d.forget(self)
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
        *,
        publish_timeout: float = 2.0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.inbox = inbox
        self.ping_interval = ping_interval
        self.ack_wait = ack_wait
        self.publish_timeout = publish_timeout
        self._by_seq: dict[int, JobRun] = {}
        self._advisories: Subscription | None = None

    async def start(self) -> None:
        subject = names.max_deliveries_advisory(names.JOBS_STREAM)
        self._advisories = await self.nc.subscribe(subject, cb=self._on_max_deliveries)

    async def stop(self) -> None:
        if self._advisories is not None:
            await unsubscribe(self._advisories)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            advisory = _advisory_decoder.decode(msg.data)
            run = self._by_seq.get(advisory.stream_seq)
            if run is not None:
                run._mailbox.put_nowait(Signal.EXHAUSTED)

    def forget(self, run: JobRun) -> None:
        # A restarted stream counts from 1 again: the seq may be a newer job's by now.
        if self._by_seq.get(run.seq) is run:
            del self._by_seq[run.seq]

    async def find_missing(self) -> None:
        """After a reconnect: tell every open job that is no longer in LLMQ_JOBS. A worker
        may have taken it (and answers soon); otherwise a restarted server lost it, and its
        client hears so now instead of at the job's deadline."""
        runs = [(seq, run) for seq, run in list(self._by_seq.items()) if not run.finished]
        for start in range(0, len(runs), 64):
            chunk = runs[start : start + 64]
            found = await asyncio.gather(*(self._in_stream(seq, run) for seq, run in chunk))
            for (_, run), present in zip(chunk, found, strict=True):
                if not present:
                    run._mailbox.put_nowait(Signal.MISSING)

    async def _in_stream(self, seq: int, run: JobRun) -> bool:
        try:
            msg = await self.js.get_msg(names.JOBS_STREAM, seq)
        except NotFoundError:
            return False
        try:
            return JobEnvelope.from_msg(msg).id == run.spec.job_id
        except EnvelopeError:
            return False

    def max_body(self) -> int:
        """Largest body that fits one NATS message, leaving room for the headers."""
        return int(self.nc.max_payload) - 1024

    async def submit(self, spec: JobSpec) -> JobRun:
        if len(spec.body) > self.max_body():
            raise DispatchError(413, "request too large for the job queue", "request_too_large")
        reply = self.inbox.subject(spec.job_id)
        mailbox = self.inbox.open(spec.job_id)
        try:
            ack = await publish_to_inbox(
                self.nc,
                spec.subject,
                spec.body,
                spec.headers(reply),
                reply,
                box=mailbox,
                timeout=self.publish_timeout,
                until=spec.deadline_ms / 1000,
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
            if store_full(exc):
                raise DispatchError(
                    503,
                    "the job queue is full (LLMQ_JOBS_STREAM_MAX_BYTES); try again later",
                    "queue_full",
                ) from exc
            raise DispatchError(
                503, f"the job queue is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from exc
        run = JobRun(self, spec, mailbox)
        run.seq = ack.seq
        self._by_seq[ack.seq] = run
        return run

    async def cancel(self, job_id: str) -> None:
        if self.nc.is_connected:
            await self.nc.publish(names.cancel_subject(job_id))
