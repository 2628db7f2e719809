"""Booking ended jobs off the request path, many per Redis round trip: part of
`Reservations` (`release_later`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from llmq.api.tenancy import QuotaBackendDown
from llmq.schemas.admission import JobUsage, Reservation

log = logging.getLogger(__name__)

BOOK_DELAY = 0.004
"""Seconds an ended job waits for others before `release_later` books it: the jobs that
end meanwhile go in the same round trip, and the booking runs less often beside the next
requests (a slot and a hold stay this much longer: never less than exact)."""
BOOK_BATCH = 64
"""...unless this many are waiting: then at once."""


class ReleaseQueue:
    """`Reservations`' queue of ended jobs; it provides `release_many` and `_retry`."""

    def __init__(self) -> None:
        self._releases: set[asyncio.Task[None]] = set()
        self._queued: list[tuple[Reservation, JobUsage]] = []
        """Ended jobs waiting for the next release round trip."""
        self._booking: set[str] = set()
        """Job ids queued or in a release round trip now (`booking_here`)."""
        self._round: asyncio.Future[None] | None = None
        """Set when a release round trip ends (`settled`)."""
        self._wake: asyncio.Future[None] | None = None
        """The flusher's wait of `BOOK_DELAY`: set early when `BOOK_BATCH` jobs wait."""
        self._flusher: asyncio.Task[None] | None = None
        self.release_rounds = 0
        """Round trips `release_later` made (observability, tests)."""

    async def release_many(
        self, ended: Sequence[tuple[Reservation, JobUsage]]
    ) -> list[bool | Exception]:
        raise NotImplementedError

    async def _retry(self, reservation: Reservation, usage: JobUsage) -> None:
        raise NotImplementedError

    def release_later(self, reservation: Reservation, usage: JobUsage) -> None:
        """`release` off the caller's path, retried while Redis is away. Releases that come
        while one round trip is under way go together in the next (`release_many`): under
        load one Redis round trip ends many jobs, and the first never waits for another."""
        if not reservation.held:
            return
        self._queued.append((reservation, usage))
        self._booking.add(reservation.job_id)
        if self._flusher is None:
            self._flusher = self._spawn(self._flush())
        elif len(self._queued) >= BOOK_BATCH and self._wake is not None:
            _wake(self._wake)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        return task

    async def _flush(self) -> None:
        """Book what queued, `BOOK_DELAY` after the first (or once `BOOK_BATCH` wait), one
        round trip at a time, until nothing is left."""
        try:
            while self._queued:
                if len(self._queued) < BOOK_BATCH:
                    loop = asyncio.get_running_loop()
                    self._wake = wake = loop.create_future()
                    timer = loop.call_later(BOOK_DELAY, _wake, wake)
                    try:
                        await wake
                    finally:
                        timer.cancel()
                        self._wake = None
                batch, self._queued = self._queued, []
                self.release_rounds += 1
                try:
                    outcomes = await self.release_many(batch)
                except Exception as exc:  # a bug, not Redis away: leave them to the lease
                    log.exception("releasing %d jobs failed", len(batch))
                    outcomes = [exc] * len(batch)
                finally:
                    self._booked(batch)
                for (reservation, usage), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, QuotaBackendDown):
                        self._spawn(self._retry(reservation, usage))
                    elif isinstance(outcome, Exception):
                        log.error("releasing job %s failed: %s", reservation.job_id, outcome)
        finally:
            self._flusher = None  # cancelled with some queued: the next end starts a new one
            self._booked(self._queued)

    def _booked(self, batch: Sequence[tuple[Reservation, JobUsage]]) -> None:
        """A round trip of `batch` ended (booked or not): wake `settled`."""
        for reservation, _ in batch:
            self._booking.discard(reservation.job_id)
        if self._round is not None:
            if not self._round.done():
                self._round.set_result(None)
            self._round = None

    def booking_here(self, job_id: str) -> bool:
        """This replica is booking the job now (`release_later`, not answered yet)."""
        return job_id in self._booking

    async def settled(self, job_ids: Iterable[str], timeout: float) -> None:
        """Wait, at most `timeout` s, until none of `job_ids` is `booking_here`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(job_id in self._booking for job_id in job_ids):
            left = deadline - loop.time()
            if left <= 0:
                return
            if self._round is None:
                self._round = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._round), left)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
