"""The results collector: turns the reply frames of async and batch jobs into stored results.

Workers send the frames of an async/batch job to `llmq.outcome.<tenant>.<model>.<job id>`,
which the file-storage work queue LLMQ_OUTCOMES captures, so a result waits on disk while no
api runs. Every api replica pulls from the one durable consumer `collector`; for each final
frame (`done` or `error`) it

1. creates the job's key in LLMQ_RESULTS (create-only: the first result wins, so a job that
   ran twice, or a frame delivered twice, still has exactly one result),
2. releases the job's quota reservation with the real usage (idempotent per job id),
3. for an async job, settles its record (status, usage, webhook),

and only then acks the frame: a crash in between redelivers it and the steps repeat
harmlessly. `accepted` frames mark an async job `in_progress`; pings are dropped.

A message that cannot be handled is not retried for ever: a final frame that is not a frame
becomes a 502 `result_unreadable` result at once (it is never stored as the result), and a
message that keeps failing (a store that refuses the write) is naked up to
`MAX_DELIVERIES` times, then terminated, its job given a 500 `result_not_stored` result
where the store still takes one, with one log line naming the job (never the body).

LLMQ_OUTCOMES also captures the server's max-deliveries advisories for LLMQ_BATCH: a job
whose workers died `max_deliver` times gets a 502 `worker_lost` result instead of waiting
for its deadline, and its message is removed from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.consume import SharedConsumer
from llmq.dispatcher.batch.ports import Reserver, reservation_of
from llmq.dispatcher.batch.records import split_line_job_id
from llmq.schemas import frames, names
from llmq.schemas.admission import FAILED, JobUsage
from llmq.schemas.envelope import EnvelopeError, JobEnvelope
from llmq.schemas.frames import Done, failure, frame_encoder
from llmq.schemas.usage import cache_counts

log = logging.getLogger(__name__)

JobHook = Callable[[str, str], Awaitable[None]]
"""(tenant, job id)."""
MAX_DELIVERIES = 5
"""Deliveries of one message before the collector gives it up (`_give_up`)."""
RETRY_DELAY = 1.0
"""Seconds before a message that failed is delivered again."""


def parse_outcome_subject(subject: str) -> tuple[str, str, str] | None:
    """(tenant, model, job id) of `llmq.outcome.<tenant>.<model>.<job id>`."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != names.OUTCOME_PREFIX:
        return None
    try:
        return names.tenant_from_token(parts[2]), names.unescape_model(parts[3]), parts[4]
    except (ValueError, UnicodeDecodeError):
        return None


def results_key(job_id: str) -> str:
    line = split_line_job_id(job_id)
    if line is not None:
        return names.line_results_key(*line)
    return names.job_results_key(job_id)


class _Advisory(msgspec.Struct):
    stream_seq: int
    deliveries: int = 0


class ResultCollector(SharedConsumer):
    stream = names.OUTCOMES_STREAM
    durable = names.COLLECTOR_CONSUMER
    name = "result collector"

    def __init__(
        self,
        js: JetStreamContext,
        results: KeyValue,
        reservations: Reserver,
        on_job_accepted: JobHook,
        on_job_result: JobHook,
        *,
        fetch_batch: int = 256,
    ) -> None:
        super().__init__(js, fetch_batch)
        self.results = results
        self.reservations = reservations
        self.on_job_accepted = on_job_accepted
        self.on_job_result = on_job_result
        self.stored = 0

    def start(self) -> None:
        self.start_pulling()

    async def _handle(self, msg: Msg) -> None:
        try:
            if msg.subject.startswith(names.BATCH_MAX_DELIVERIES.removesuffix("*")):
                await self._exhausted(msg)
            else:
                await self._frame(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _deliveries(msg) < MAX_DELIVERIES:
                log.warning("result collector: %s on %s; retrying", _named(exc), msg.subject)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=RETRY_DELAY)
            else:
                await self._give_up(msg, exc)
            return
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _give_up(self, msg: Msg, exc: Exception) -> None:
        """A message that failed `MAX_DELIVERIES` times: terminated, so it loops no more;
        its job (a final frame's) gets a `result_not_stored` failure where the store takes
        it, and the reservation is released as failed where the quota store answers."""
        log.error(
            "result collector: gave up on %s after %d deliveries: %s",
            msg.subject,
            _deliveries(msg),
            _named(exc),
        )
        parsed = parse_outcome_subject(msg.subject)
        kind = (msg.headers or {}).get(names.H_FRAME)
        if parsed is not None and kind in (frames.DONE, frames.ERROR):
            tenant, model, job_id = parsed
            message = f"the job's result could not be stored ({type(exc).__name__})"
            failed = failure(500, message, "server_error", "result_not_stored")
            with contextlib.suppress(Exception):
                await self.store(tenant, model, job_id, frame_encoder.encode(failed))
        with contextlib.suppress(Exception):
            await msg.term()

    async def _frame(self, msg: Msg) -> None:
        parsed = parse_outcome_subject(msg.subject)
        if parsed is None:
            return
        tenant, model, job_id = parsed
        kind = (msg.headers or {}).get(names.H_FRAME)
        if kind == frames.ACCEPTED:
            if split_line_job_id(job_id) is None:
                await self.on_job_accepted(tenant, job_id)
        elif kind in (frames.DONE, frames.ERROR):
            await self.store(tenant, model, job_id, msg.data)

    async def store(self, tenant: str, model: str, job_id: str, frame: bytes) -> None:
        """Record a final frame as the job's result (unless it has one), book its usage. A
        frame that does not decode is never the result: a `result_unreadable` failure is."""
        try:
            decoded = frames.frame_decoder.decode(frame)
        except msgspec.DecodeError as exc:
            log.error("result collector: job %s: its final frame does not decode: %s", job_id, exc)
            message = "the worker's result could not be read"
            decoded = failure(502, message, "upstream_error", "result_unreadable")
            frame = frame_encoder.encode(decoded)
        await kvs.create_once(self.results, results_key(job_id), frame)
        self.stored += 1
        usage = FAILED
        if isinstance(decoded, Done):
            cached, written = cache_counts(decoded.usage)
            usage = JobUsage(
                decoded.usage.prompt_tokens,
                decoded.usage.completion_tokens,
                cached_tokens=cached,
                cache_write_tokens=written,
            )
        await self.reservations.release(reservation_of(tenant, model, job_id), usage)
        if split_line_job_id(job_id) is None:
            await self.on_job_result(tenant, job_id)

    async def _exhausted(self, msg: Msg) -> None:
        advisory = msgspec.json.decode(msg.data, type=_Advisory)
        try:
            job = await self.js.get_msg(names.BATCH_STREAM, seq=advisory.stream_seq)
        except NotFoundError:
            return
        try:
            reply = JobEnvelope.from_headers(job.subject or "", job.headers).reply
        except EnvelopeError as exc:
            reply = exc.reply
        parsed = parse_outcome_subject(reply)
        if parsed is not None:
            tenant, model, job_id = parsed
            failed = failure(
                502,
                f"the job was given to {advisory.deliveries} workers and none of them finished it",
                "upstream_error",
                "worker_lost",
            )
            await self.store(tenant, model, job_id, frame_encoder.encode(failed))
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(names.BATCH_STREAM, advisory.stream_seq)


def _deliveries(msg: Msg) -> int:
    """How many times JetStream delivered `msg` (1 on the first delivery)."""
    try:
        return msg.metadata.num_delivered or 1
    except Exception:  # not a JetStream message: nothing to count
        return 1


def _named(exc: Exception) -> str:
    """An exception for the log: its type and its first 200 characters."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"
