"""One batch's state while this replica holds its lease: its lease and record, its input, the
results seen so far and the lines it queued. The phases (`validate`, `progress`, `finalize`)
act on it; `phases.drive` runs them in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.jsonl import InputLine
from llmq.dispatcher.batch.lease import Lease
from llmq.dispatcher.batch.ports import Preparer, Reserver, reservation_of
from llmq.dispatcher.batch.records import BatchRecord, line_job_id, result_decoder
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas import names
from llmq.schemas.admission import FAILED, PreparedRequest
from llmq.schemas.frames import Done

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunContext:
    """What a batch run needs from the replica that runs it."""

    nc: Client
    js: JetStreamContext
    results: KeyValue
    files: FileStore
    preparer: Preparer
    reservations: Reserver
    stall: float
    max_inflight: int
    max_lines: int
    publish_timeout: float
    on_final: Callable[[], None]
    """Called once for every batch this run brings to a final status."""


@dataclass(slots=True)
class DispatchState:
    """What the phase remembers between its steps (a step that failed is run again)."""

    retry_at: float = 0.0
    """Wall time before which no line is reserved (the tenant was rate limited)."""
    last_stall_check: float = field(default_factory=time.monotonic)
    requeued: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class BatchInput:
    """The input file, line by line, with every valid line prepared."""

    lines: list[InputLine]
    prepared: dict[int, PreparedRequest] = field(default_factory=dict)
    valid: list[int] = field(default_factory=list)
    """Numbers of the lines that can run, in file order."""


class BatchRun:
    """One batch's state while this replica holds its lease; `phases.drive` runs it."""

    def __init__(self, ctx: RunContext, lease: Lease) -> None:
        self.ctx = ctx
        self.lease = lease
        self.key = lease.key
        self.hex = lease.record.id
        self.tenant = lease.record.tenant
        self.input: BatchInput | None = None
        self.done: dict[int, bool] = {}
        """Line -> whether its result is a success, for every line that has one."""
        self.changed = asyncio.Event()
        self.last_result = time.monotonic()
        self.seqs: dict[int, int] = {}
        """Line -> its message's sequence in LLMQ_BATCH, for lines this run queued."""
        self.dispatching = DispatchState()
        self._follower: kvs.Follower | None = None

    @property
    def record(self) -> BatchRecord:
        return self.lease.record

    async def write(
        self, change: Callable[[BatchRecord], BatchRecord], *, final: bool = False
    ) -> BatchRecord:
        return await self.lease.write(change, final=final)

    async def close(self, renew: asyncio.Task[None]) -> None:
        """Stop renewing the lease and following results (the run is over)."""
        await stop_task(renew)
        if self._follower is not None:
            await self._follower.stop()

    # --- results -------------------------------------------------------------------------

    def result_key(self, line: int) -> str:
        return names.line_results_key(self.hex, line)

    async def store_unrun(self, lines: dict[int, bytes], release: bool = False) -> None:
        """Give lines a result of llmq's own, unless they have one (create-only)."""
        prepared = self.input.prepared if self.input is not None else {}

        async def one(number: int, value: bytes) -> None:
            created = await kvs.create_once(self.ctx.results, self.result_key(number), value)
            if created and release and number in prepared:
                await self.release(number, prepared[number].model)

        items = list(lines.items())
        for start in range(0, len(items), 64):
            await asyncio.gather(*(one(n, v) for n, v in items[start : start + 64]))

    async def release(self, number: int, model: str) -> None:
        """Give back the reservation of a line that ends without running (only once its
        `Unrun` result is stored: a line that has a real result was released with it)."""
        reservation = reservation_of(self.tenant, model, line_job_id(self.hex, number))
        deadline = time.monotonic() + 5.0
        try:
            await retry(
                lambda: self.ctx.reservations.release(reservation, FAILED),
                f"release {reservation.job_id}",
                until=lambda: time.monotonic() > deadline,
            )
        except TimeoutError:
            log.warning("could not release %s; its lease will reclaim the slot", reservation.job_id)

    def _on_result(self, key: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            number = int(key.rsplit(".", 1)[1])
            result = result_decoder.decode(value)
        except (ValueError, msgspec.DecodeError):
            return
        if number not in self.done:
            self.done[number] = isinstance(result, Done)
            self.last_result = time.monotonic()
            self.changed.set()

    @property
    def following(self) -> bool:
        return self._follower is not None

    async def follow_results(self) -> None:
        """Keep `done` up to date from the results bucket; returns once it has caught up."""
        if self._follower is None:
            self._follower = kvs.Follower(
                self.ctx.results,
                f"line.{self.hex}.*",
                self._on_result,
                resync=max(5.0, min(self.ctx.stall, 30.0)),
                name=f"batch-results-{self.hex}",
            )
            self._follower.start()
        async with asyncio.timeout(30):
            await self._follower.synced.wait()
