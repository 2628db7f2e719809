"""The lease on one batch: which replica runs it, and for how long without a word.

A batch record carries `owner` and `lease_until`. A replica takes a batch whose lease ran
out with a compare-and-set, renews it with every write (at least every lease/3) and loses it
the moment a write finds another owner. So a killed replica's batches move to another one
after one lease, and two replicas never both think they own a batch for longer than it
takes one write to fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.records import FINAL_BATCH, BatchRecord, encoder
from llmq.dispatcher.batch.store import BatchStore

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    pass


def runnable(record: BatchRecord, owner: str, now: float) -> bool:
    """Not final, and ours or nobody's (a lease that ran out is nobody's)."""
    if record.status in FINAL_BATCH:
        return False
    return not (record.owner and record.owner != owner and record.lease_until > now)


async def take(
    store: BatchStore, key: str, owner: str, seconds: float
) -> tuple[BatchRecord, int] | None:
    """Take the batch's lease for `owner`; None when it is final or another's."""
    now = time.time()

    def claim(record: BatchRecord) -> BatchRecord | None:
        if not runnable(record, owner, now):
            return None
        record.owner, record.lease_until = owner, now + seconds
        return record

    out = await store.mutate(key, claim)
    if out is None or not out[2]:
        return None
    return out[0], out[1]


async def hand_back(store: BatchStore, key: str, owner: str) -> None:
    """Give the lease up, so another replica resumes the batch at once."""

    def release(record: BatchRecord) -> BatchRecord | None:
        if record.owner != owner:
            return None
        record.owner, record.lease_until = "", 0.0
        return record

    await store.mutate(key, release)


class Lease:
    """A held lease: the batch's record as last written, written only as its owner."""

    def __init__(
        self,
        store: BatchStore,
        key: str,
        record: BatchRecord,
        revision: int,
        owner: str,
        *,
        seconds: float,
    ) -> None:
        self.store = store
        self.key = key
        self.record = record
        self.revision = revision
        self.owner = owner
        self.seconds = seconds
        self._lock = asyncio.Lock()

    async def write(
        self, change: Callable[[BatchRecord], BatchRecord], *, final: bool = False
    ) -> BatchRecord:
        """Compare-and-set the record as its owner (renewing the lease). On a conflict the
        fresh record is taken (a cancel may have landed) and `change` applied to it again;
        LeaseLost when another replica owns it or it is final."""
        async with self._lock:
            for _ in range(50):
                new = change(msgspec.json.decode(encoder.encode(self.record), type=BatchRecord))
                if final:
                    new.owner, new.lease_until = "", 0.0
                else:
                    new.owner, new.lease_until = self.owner, time.time() + self.seconds
                try:
                    self.revision = await self.store.update(self.key, new, last=self.revision)
                    self.record = new
                    return new
                except KeyWrongLastSequenceError:
                    found = await self.store.read(self.key)
                    if found is None:
                        raise LeaseLost(self.key) from None
                    self.record, self.revision = found
                    if self.record.owner != self.owner or self.record.status in FINAL_BATCH:
                        raise LeaseLost(self.key) from None
            raise kvs.Conflict(self.key)

    async def keep(self, holder: asyncio.Task[None] | None) -> None:
        """Renew every lease/3 until cancelled; cancel `holder` when the lease is lost."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                await self.write(lambda r: r)
            except LeaseLost:
                log.warning("lost the lease of batch %s", self.key)
                if holder is not None:
                    holder.cancel()
                return
            except Exception as exc:
                log.info("renewing the lease of batch %s failed: %s", self.key, exc)
