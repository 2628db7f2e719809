"""Room in a full store: the oldest finished async jobs and batches go first.

Finished records would otherwise stay until their age (`LLMQ_JOB_RETENTION`) while new work
gets a 507. Past `LLMQ_STORE_EVICT_WATER` of a bucket's byte bound, an api deletes finished
records, oldest first, until the bucket is below that share again: an async job with its
result (frees LLMQ_ASYNC_JOBS and LLMQ_RESULTS) once its webhook, if any, is settled; a batch
with the line results it still holds (frees LLMQ_BATCHES and LLMQ_RESULTS; finalizing drops
them, but one may be left). A queued or running job or batch is never touched, and nothing
else is deleted, so a store full of live work still answers 507 (`store_room`). The batch's
output and error files are the tenant's files and stay.

A bucket is walked in its stream's order: with one revision per key, a record's place is its
last write, for a finished record the write that settled it. A record is removed by a purge
of its own subject (a batch's lines: of theirs), which leaves no tombstone behind. Every
replica may evict at once: a record evicted twice is a no-op, so at most one record each is
evicted too many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmq.api.batch.store_room import fill_of
from llmq.dispatcher.batch.records import (
    FINAL_BATCH,
    FINAL_JOB,
    BatchRecord,
    JobRecord,
    batch_decoder,
    job_decoder,
)
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names

log = logging.getLogger(__name__)
T = TypeVar("T")

JOBS = f"KV_{names.ASYNC_JOBS_BUCKET}"
RESULTS = f"KV_{names.RESULTS_BUCKET}"
BATCHES = f"KV_{names.BATCHES_BUCKET}"
EVICTABLE = (JOBS, RESULTS, BATCHES)
"""The buckets finished records can be evicted from; the queues and files are never evicted."""
WALK = 100_000
"""Messages one walk looks at, at most (live records at the stream's start are skipped)."""


@dataclass(slots=True)
class Finished:
    ended: float
    evict: Callable[[], Awaitable[bool]]


def _batch_end(record: BatchRecord) -> float:
    ends = (record.completed_at, record.failed_at, record.expired_at, record.cancelled_at)
    return float(max((e for e in ends if e), default=record.created_at))


class Evictor:
    def __init__(self, js: JetStreamContext, water: float) -> None:
        self.js = js
        self.water = water
        self.evicted = {"jobs": 0, "batches": 0}
        self.stuck: set[str] = set()
        """Stores past the water mark with nothing finished left to evict (said once)."""
        self._locks = {stream: asyncio.Lock() for stream in EVICTABLE}
        self._task: asyncio.Task[None] | None = None

    # --- making room ---------------------------------------------------------------------

    async def make_room(self, stream: str, within: float) -> None:
        """Evict the oldest finished records that free `stream`, one at a time, until it is
        below the water mark, nothing finished is left, or `within` seconds passed (also
        while another call of this replica holds the store)."""
        lock = self._locks.get(stream)
        if lock is None:
            return
        deadline = time.monotonic() + within
        try:
            async with asyncio.timeout(within):
                await lock.acquire()
        except TimeoutError:
            return
        try:
            await self._evict(stream, deadline)
        finally:
            lock.release()

    async def _evict(self, stream: str, deadline: float) -> None:
        if await fill_of(self.js, stream) < self.water:
            self.stuck.discard(stream)
            return
        walks = []
        if stream in (JOBS, RESULTS):
            walks.append(self._finished_jobs())
        if stream in (BATCHES, RESULTS):
            walks.append(self._finished_batches())
        try:
            async for found in _oldest_first(walks):
                await found.evict()
                if await fill_of(self.js, stream) < self.water or time.monotonic() > deadline:
                    return
        finally:
            for walk in walks:
                await walk.aclose()
        if stream not in self.stuck:
            log.warning("%s is full of queued and running work: nothing to evict", stream)
        self.stuck.add(stream)

    async def _finished_jobs(self) -> AsyncGenerator[Finished]:
        async for record in self._walk(names.ASYNC_JOBS_BUCKET, job_decoder):
            if record.status in FINAL_JOB and record.webhook != "pending":
                yield Finished(record.ended_at or record.created_at, self._job(record))

    async def _finished_batches(self) -> AsyncGenerator[Finished]:
        async for record in self._walk(names.BATCHES_BUCKET, batch_decoder):
            if record.status in FINAL_BATCH:
                yield Finished(_batch_end(record), self._batch(record))

    def _job(self, record: JobRecord) -> Callable[[], Awaitable[bool]]:
        async def evict() -> bool:
            key = f"{names.tenant_token(record.tenant)}.{record.id}"
            if not await self._purge(
                JOBS, names.kv_subject(names.ASYNC_JOBS_BUCKET, key), one=True
            ):
                return False  # another replica evicted it
            result = names.job_results_key(record.id)
            await self._purge(RESULTS, names.kv_subject(names.RESULTS_BUCKET, result))
            self.evicted["jobs"] += 1
            return True

        return evict

    def _batch(self, record: BatchRecord) -> Callable[[], Awaitable[bool]]:
        async def evict() -> bool:
            # The lines first: a batch interrupted here is found again by the next walk.
            lines = names.line_results_key(record.id)
            await self._purge(RESULTS, names.kv_subject(names.RESULTS_BUCKET, lines))
            key = f"{names.tenant_token(record.tenant)}.{record.id}"
            if not await self._purge(
                BATCHES, names.kv_subject(names.BATCHES_BUCKET, key), one=True
            ):
                return False
            self.evicted["batches"] += 1
            return True

        return evict

    # --- JetStream -----------------------------------------------------------------------

    async def _walk(self, bucket: str, decoder: msgspec.json.Decoder[T]) -> AsyncIterator[T]:
        """The bucket's live records, oldest write first."""
        stream, every = f"KV_{bucket}", names.kv_subject(bucket, ">")
        seq = 1
        for _ in range(WALK):
            try:
                msg = await self.js.get_msg(stream, seq=seq, subject=every, next=True)
            except NotFoundError:
                return
            seq = int(msg.seq or seq) + 1
            if not msg.data:  # a delete or purge marker
                continue
            try:
                record = decoder.decode(msg.data)
            except msgspec.DecodeError:
                continue
            yield record

    async def _purge(self, stream: str, subject: str, *, one: bool = False) -> bool:
        """Remove every message of `subject` (a batch's lines, or with `one` a record's key:
        False when it is gone already)."""
        if one and not (await self.js.stream_info(stream, subjects_filter=subject)).state.subjects:
            return False
        await self.js.purge_stream(stream, subject=subject)
        return True

    # --- the sweeper ---------------------------------------------------------------------

    def start(self, every: float = 1.0) -> None:
        self._task = asyncio.create_task(self._sweep(every), name="store-evictor")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _sweep(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for stream in EVICTABLE:
                try:
                    await self.make_room(stream, within=30.0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("evicting finished records from %s failed: %s", stream, exc)


async def _oldest_first(walks: list[AsyncGenerator[Finished]]) -> AsyncIterator[Finished]:
    """Merge walks (each oldest first) into one, by end time."""
    heads = {i: await anext(w, None) for i, w in enumerate(walks)}
    while True:
        live = {i: h for i, h in heads.items() if h is not None}
        if not live:
            return
        i = min(live, key=lambda i: live[i].ended)
        yield live[i]
        heads[i] = await anext(walks[i], None)
