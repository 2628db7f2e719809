"""The batch store: the one owner of the LLMQ_BATCHES bucket and its keys.

A batch record lives under `<tenant token>.<batch id>`. The api creates, reads, lists and
cancels batches through this store; the runner follows it, takes and hands back leases and
writes progress through it. Nobody else touches the bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.records import BatchRecord, batch_decoder, encoder
from llmq.schemas import names

Change = Callable[[BatchRecord], BatchRecord | None]


def batch_key(tenant: str, batch_hex: str) -> str:
    return f"{names.tenant_token(tenant)}.{batch_hex}"


class BatchStore:
    def __init__(self, bucket: KeyValue) -> None:
        self.bucket = bucket

    # --- the api's side ------------------------------------------------------------------

    async def create(self, record: BatchRecord) -> None:
        await kvs.create_once(
            self.bucket, batch_key(record.tenant, record.id), encoder.encode(record)
        )

    async def get(self, tenant: str, batch_hex: str) -> BatchRecord | None:
        found = await self.read(batch_key(tenant, batch_hex))
        return found[0] if found else None

    async def ids(self, tenant: str) -> list[str]:
        """The tenant's batch ids, newest first (ids are time-ordered)."""
        keys = await kvs.scan(self.bucket, f"{names.tenant_token(tenant)}.*", meta_only=True)
        return sorted((k.split(".", 1)[1] for k in keys), reverse=True)

    async def cancel(self, tenant: str, batch_hex: str) -> BatchRecord | None:
        """Mark a running batch `cancelling` (its runner winds it down); a batch already
        past that is returned as it is. None when there is no such batch."""
        now = int(time.time())

        def cancel(record: BatchRecord) -> BatchRecord | None:
            if record.status not in ("validating", "in_progress"):
                return None
            record.status, record.cancelling_at = "cancelling", now
            return record

        out = await self.mutate(batch_key(tenant, batch_hex), cancel)
        return out[0] if out else None

    # --- the runner's side ---------------------------------------------------------------

    async def read(self, key: str) -> tuple[BatchRecord, int] | None:
        return await kvs.read(self.bucket, key, batch_decoder)

    async def mutate(self, key: str, change: Change) -> tuple[BatchRecord, int, bool] | None:
        """Compare-and-set `change` onto the record (see `kv.mutate`)."""
        return await kvs.mutate(self.bucket, key, batch_decoder, change)

    async def update(self, key: str, record: BatchRecord, last: int) -> int:
        """Write `record` if the stored revision is still `last`; its new revision.
        Raises `KeyWrongLastSequenceError` otherwise."""
        return await self.bucket.update(key, encoder.encode(record), last=last)

    def follower(self, on_record: Callable[[str, bytes | None], None]) -> kvs.Follower:
        """Every record, now and as it changes (for the runner's view)."""
        return kvs.Follower(self.bucket, "*.*", on_record, resync=30.0, name="batches")
