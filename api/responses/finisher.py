"""Ending background responses as soon as their async job ends, not at the next read.

Follows LLMQ_ASYNC_JOBS; when the record of a `response` job turns final, the stored
response is brought up to date (`ResponseRecords.refresh`): stored with its output, and
appended to its conversation. Every api replica does this at once; the compare-and-set
claim in `ResponseRecords.finish` keeps the append to exactly one. Jobs that ended more
than `window` seconds ago are left to the next read (a full replay after a restart stays
cheap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import msgspec
from nats.js.kv import KeyValue

from llmq.api.responses.records import ResponseRecords
from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.records import FINAL_JOB, job_decoder

log = logging.getLogger(__name__)


class ResponseFinisher:
    def __init__(
        self, records: ResponseRecords, jobs: KeyValue, window: float = 3600.0, memory: int = 10_000
    ) -> None:
        self.records = records
        self.window = window
        self.memory = memory
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._follower = kvs.Follower(jobs, "*.*", self._on_record, name="response-finisher")

    def start(self) -> None:
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_record(self, _key: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            record = job_decoder.decode(value)
        except msgspec.DecodeError:
            return
        if record.kind != "response" or record.status not in FINAL_JOB:
            return
        if (record.ended_at or 0.0) < time.time() - self.window or record.id in self._seen:
            return
        self._seen[record.id] = None
        if len(self._seen) > self.memory:
            self._seen.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._finish(record.tenant, record.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, tenant: str, hex_id: str) -> None:
        try:
            stored = await self.records.store.get_response(tenant, hex_id)
            if stored is not None:
                await self.records.refresh(stored)
        except Exception as exc:  # the next replay, or the next read, finishes it
            self._seen.pop(hex_id, None)
            log.warning("could not finish background response %s: %s", hex_id, exc)
