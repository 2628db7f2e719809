"""The batch runner: every api replica runs one; each batch is run by exactly one of them.

The runner follows the batch store, takes the lease (`lease`) of every batch that is not
final and whose lease ran out, and runs it (`run`) until it is final or the lease is lost.
At shutdown it hands its leases back, so another replica resumes its batches at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher.batch import lease
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.phases import drive
from llmq.dispatcher.batch.ports import Preparer, Reserver
from llmq.dispatcher.batch.records import FINAL_BATCH, BatchRecord, batch_decoder
from llmq.dispatcher.batch.run import BatchRun, RunContext
from llmq.dispatcher.batch.store import BatchStore
from llmq.dispatcher.tasks import stop_task

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        store: BatchStore,
        results: KeyValue,
        files: FileStore,
        *,
        preparer: Preparer,
        reservations: Reserver,
        owner: str,
        lease: float,
        stall: float,
        max_inflight: int,
        max_lines: int,
        max_active: int = 64,
        publish_timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.max_active = max_active
        self.context = RunContext(
            nc=nc,
            js=js,
            results=results,
            files=files,
            preparer=preparer,
            reservations=reservations,
            stall=stall,
            max_inflight=max_inflight,
            max_lines=max_lines,
            publish_timeout=publish_timeout,
            on_final=self._on_final,
        )
        self.view: dict[str, BatchRecord] = {}
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.finalized = 0
        """Batches this replica brought to a final status (for tests)."""
        self._kick = asyncio.Event()
        self._follower = store.follower(self._on_record)
        self._task: asyncio.Task[None] | None = None

    def _on_final(self) -> None:
        self.finalized += 1

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._follower.start()
        self._task = asyncio.create_task(self._supervise(), name="batch-supervisor")

    async def stop(self) -> None:
        """Stop running batches and hand their leases back, so another replica resumes them
        at once instead of after a lease."""
        await self._follower.stop()
        if self._task is not None:
            await stop_task(self._task)
        keys = list(self.runs)
        for task in list(self.runs.values()):
            task.cancel()
        for task in list(self.runs.values()):
            await stop_task(task)
        for key in keys:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await lease.hand_back(self.store, key, self.owner)
        self.runs.clear()

    def kick(self) -> None:
        """Look at the batches now (one was created or cancelled)."""
        self._kick.set()

    def _on_record(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.view.pop(key, None)
            return
        try:
            record = batch_decoder.decode(value)
        except msgspec.DecodeError:
            return
        if record.status in FINAL_BATCH:
            self.view.pop(key, None)
        else:
            self.view[key] = record
            self._kick.set()

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._kick.wait()
            self._kick.clear()
            now = time.time()
            for key, record in list(self.view.items()):
                if key in self.runs or len(self.runs) >= self.max_active:
                    continue
                if not lease.runnable(record, self.owner, now):
                    continue
                try:
                    await self._take(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not take batch %s: %s", key, exc)

    async def _take(self, key: str) -> None:
        taken = await lease.take(self.store, key, self.owner, self.lease)
        if taken is None:
            return
        record, revision = taken
        log.info("running batch %s (%s)", key, record.status)
        held = lease.Lease(self.store, key, record, revision, self.owner, seconds=self.lease)
        task = asyncio.create_task(drive(BatchRun(self.context, held)), name=f"batch-{record.id}")
        self.runs[key] = task

        def done(_task: asyncio.Task[None]) -> None:
            if self.runs.get(key) is task:
                del self.runs[key]
            self._kick.set()

        task.add_done_callback(done)
