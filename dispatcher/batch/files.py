"""`/v1/files`: bytes in the JetStream object store LLMQ_FILES, records in LLMQ_FILE_META.

Object name `<tenant token>/<file id>`, record key `<tenant token>.<file id>`: a tenant only
ever sees its own files. The tenant here is the tenant's scope (`names.tenant_scope`), so a
new tenant of a deleted one's name never sees its files. Upload writes the object first and
the record last, delete removes the record first, so a file is listed only while its bytes
exist; the `meter` hears of each size after its record is written or removed. A file past
its `expires_at` is gone for readers at once; `sweep` deletes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import IO, cast

from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.ports import FileMeter
from llmq.dispatcher.batch.records import (
    FILE_ID_PREFIX,
    FileRecord,
    encoder,
    file_decoder,
    time_hex,
)
from llmq.schemas import names

log = logging.getLogger(__name__)


def new_file_id() -> str:
    return FILE_ID_PREFIX + time_hex()


def valid_file_id(file_id: str) -> bool:
    tail = file_id[len(FILE_ID_PREFIX) :]
    return (
        file_id.startswith(FILE_ID_PREFIX)
        and 0 < len(tail) <= 64
        and all(c.isalnum() or c in "-_" for c in tail)
    )


class FileStore:
    def __init__(self, objects: ObjectStore, meta: KeyValue, meter: FileMeter | None = None):
        self.objects = objects
        self.meta = meta
        self.meter = meter

    @staticmethod
    def _object(tenant: str, file_id: str) -> str:
        return f"{names.tenant_token(tenant)}/{file_id}"

    @staticmethod
    def _key(tenant: str, file_id: str) -> str:
        return f"{names.tenant_token(tenant)}.{file_id}"

    async def put(
        self,
        tenant: str,
        data: bytes | IO[bytes],
        filename: str,
        purpose: str,
        file_id: str | None = None,
        *,
        expires_after: int | None = None,
    ) -> FileRecord:
        """Store a file (bytes, or a binary file object read in chunks); with a given
        `file_id` an existing file of that id is replaced (how a batch's output is written
        again after a crash, under the same id). `expires_after`: seconds from `created_at`
        (one clock read for both, however long the store took)."""
        file_id = file_id or new_file_id()
        # nats reads any object with `readinto` in chunks, off the event loop
        reader = data if isinstance(data, bytes) else cast(io.BufferedIOBase, data)
        info = await self.objects.put(self._object(tenant, file_id), reader)
        created_at = int(time.time())
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            bytes=int(info.size or 0),
            created_at=created_at,
            filename=filename,
            purpose=purpose,
            expires_at=None if expires_after is None else created_at + expires_after,
        )
        await self.meta.put(self._key(tenant, file_id), encoder.encode(record))
        if self.meter is not None:
            await self.meter.record(tenant, file_id, record.bytes, record.expires_at)
        return record

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        if not valid_file_id(file_id):
            return None
        found = await kvs.read(self.meta, self._key(tenant, file_id), file_decoder)
        return found[0] if found and not _expired(found[0], time.time()) else None

    async def content(self, tenant: str, file_id: str) -> bytes | None:
        if await self.get(tenant, file_id) is None:
            return None
        try:
            result = await self.objects.get(self._object(tenant, file_id))
        except (ObjectNotFoundError, NotFoundError):
            return None
        return bytes(result.data or b"")

    async def list(self, tenant: str) -> list[FileRecord]:
        """The tenant's live files, newest first."""
        values = await kvs.scan(self.meta, f"{names.tenant_token(tenant)}.*")
        now = time.time()
        records = [file_decoder.decode(v) for v in values.values() if v]
        records = [r for r in records if not _expired(r, now)]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        await self._remove(tenant, file_id)
        return True

    async def _remove(self, tenant: str, file_id: str) -> None:
        await self.meta.purge(self._key(tenant, file_id))
        if self.meter is not None:
            await self.meter.record(tenant, file_id, 0, None)
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            await self.objects.delete(self._object(tenant, file_id))

    async def sweep(self, now: float | None = None) -> int:
        """Delete every expired file of every tenant; how many were deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for value in (await kvs.scan(self.meta, ">")).values():
            record = file_decoder.decode(value)
            if _expired(record, now):
                await self._remove(record.tenant, record.id)
                deleted += 1
        return deleted

    async def purge(self, tenant: str) -> int:
        """Delete every file of `tenant` (a deleted tenant's scope); how many."""
        keys = await kvs.scan(self.meta, f"{names.tenant_token(tenant)}.*", meta_only=True)
        for key in keys:
            await self._remove(tenant, key.split(".", 1)[1])
        return len(keys)


def _expired(record: FileRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at <= now
