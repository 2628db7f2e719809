"""Booking interactive usage from the workers' reports, whichever api replica is alive.

A worker publishes the final usage of every interactive job on `llmq.usage.<tenant>.<model>`
(`schemas.usage`, one core publish per job); LLMQ_USAGE keeps it on disk. Every api replica
pulls from the one durable consumer `usage-booker` and releases the job's reservation with
that usage. The api that relayed the job releases it too, from the `done` frame: the ledger
books only the first release of a job id (`release.lua`), so whichever comes second changes
nothing, and a job whose api died mid-stream is still booked exactly once. A report of a
job this replica released already (the usual case) is acked without that second,
idempotent release; the others of a fetch are released in one round trip. A failed job's
report waits `FAILED_GRACE` first: the relaying api, when alive, books its own estimate
(prompt estimate + tokens relayed), which the worker cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from llmq.api.reservations import Reservations
from llmq.dispatcher import streams
from llmq.dispatcher.batch.consume import SharedConsumer
from llmq.dispatcher.batch.ports import reservation_of
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Reservation
from llmq.schemas.usage import FinalUsage, usage_decoder

log = logging.getLogger(__name__)

FAILED_GRACE = 3.0
"""Seconds a failed job's report waits, so the api that relayed the job books first."""
RETRY_DELAY = 1.0
"""Seconds before a report is offered again when booking failed (Redis away)."""
FETCH_PAUSE = 0.02
"""Seconds between fetches when the last one was not full: reports gather meanwhile, so a
fetch (a pull request and its answer), and the booker's wake-up, serves many of them;
a job's booking is this much later only when its own api did not book it."""
SETTLE_WAIT = 1.0
"""Seconds a fetch waits at most for this replica's own pending bookings of its jobs
(`Reservations.settled`: the relaying api books a few ms after the job's end), rather
than booking them a second time."""


class UsageBooker(SharedConsumer):
    stream = names.USAGE_STREAM
    durable = names.USAGE_CONSUMER
    name = "usage booker"

    def __init__(
        self,
        js: JetStreamContext,
        reservations: Reservations,
        replicas: int = 1,
        fetch_batch: int = 256,
        create: bool = True,
    ) -> None:
        super().__init__(js, fetch_batch)
        self.replicas = replicas
        self.create = create
        """False: LLMQ_USAGE is looked up, never created (LLMQ_NATS_PROVISION)."""
        self.reservations = reservations
        self.booked = 0
        """Reports handled (booked, or found booked already by the relaying api)."""
        self.skipped = 0
        """Of those, reports of jobs this replica had released itself (no Redis call)."""

    async def start(self) -> None:
        await streams.ensure_usage_stream(self.js, self.replicas, self.create)
        self.start_pulling()

    async def _handle_all(self, msgs: list[Msg]) -> None:
        """One fetch's reports; then, when it was not full, `FETCH_PAUSE` before the next."""
        await self._handle_reports(msgs)
        if len(msgs) < self.fetch_batch:
            await asyncio.sleep(FETCH_PAUSE)

    async def _handle_reports(self, msgs: list[Msg]) -> None:
        """The job's own api released most of them already, or is about to (waited for,
        `SETTLE_WAIT`): acked without a Redis call; the rest are released together, in one
        round trip."""
        reports = await _readable(msgs)
        reservations = self.reservations
        mine = [r.job_id for _, r in reports if reservations.booking_here(r.job_id)]
        if mine:
            await reservations.settled(mine, SETTLE_WAIT)
        due: list[tuple[Msg, Reservation, JobUsage]] = []
        for msg, report in reports:
            if report.failed:
                age = time.time() - msg.metadata.timestamp.timestamp()
                if age < FAILED_GRACE:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=FAILED_GRACE - age)
                    continue
            if reservations.released_here(report.job_id):
                self.booked += 1
                self.skipped += 1
                with contextlib.suppress(Exception):
                    await msg.ack()
                continue
            usage = JobUsage(
                report.prompt_tokens,
                report.completion_tokens,
                failed=report.failed,
                cached_tokens=report.cached_tokens,
                cache_write_tokens=report.cache_write_tokens,
            )
            reservation = reservation_of(report.tenant, report.model, report.job_id)
            if report.lease:
                reservation = replace(reservation, lease=report.lease)
            due.append((msg, reservation, usage))
        if due:
            await self._book(due)

    async def _book(self, due: list[tuple[Msg, Reservation, JobUsage]]) -> None:
        """Release the jobs of `due` in one round trip; ack each booked, nak the others."""
        try:
            outcomes = await self.reservations.release_many([(r, u) for _, r, u in due])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not Redis away (that comes back per job)
            outcomes = [exc] * len(due)
        for (msg, reservation, _), outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("usage booker: %s booking %s; retrying", outcome, reservation.job_id)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=RETRY_DELAY)
                continue
            self.booked += 1
            with contextlib.suppress(Exception):
                await msg.ack()


async def _readable(msgs: list[Msg]) -> list[tuple[Msg, FinalUsage]]:
    """The reports that decode; an unreadable one is dropped (terminated), with a warning."""
    out = []
    for msg in msgs:
        try:
            out.append((msg, usage_decoder.decode(msg.data)))
        except msgspec.DecodeError as exc:
            log.warning("usage booker: dropping an unreadable report on %s: %s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.term()
    return out
