"""`/v1/files`: bytes in the JetStream object store LLMQ_FILES, records in LLMQ_FILE_META.

Object name `<tenant token>/<file id>`, record key `<tenant token>.<file id>`: a tenant only
ever sees its own files. Upload writes the object first and the record last, delete removes
the record first, so a file is listed only while its bytes exist.
"""

from __future__ import annotations

import contextlib
import time

from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.records import (
    FILE_ID_PREFIX,
    FileRecord,
    encoder,
    file_decoder,
    time_hex,
)
from llmq.schemas import names


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
    def __init__(self, objects: ObjectStore, meta: KeyValue) -> None:
        self.objects = objects
        self.meta = meta

    @staticmethod
    def _object(tenant: str, file_id: str) -> str:
        return f"{names.tenant_token(tenant)}/{file_id}"

    @staticmethod
    def _key(tenant: str, file_id: str) -> str:
        return f"{names.tenant_token(tenant)}.{file_id}"

    async def put(
        self,
        tenant: str,
        data: bytes,
        filename: str,
        purpose: str,
        file_id: str | None = None,
    ) -> FileRecord:
        """Store a file; with a given `file_id` an existing file of that id is replaced (how
        a batch's output is written again after a crash, under the same id)."""
        file_id = file_id or new_file_id()
        await self.objects.put(self._object(tenant, file_id), data)
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            bytes=len(data),
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        await self.meta.put(self._key(tenant, file_id), encoder.encode(record))
        return record

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        if not valid_file_id(file_id):
            return None
        found = await kvs.read(self.meta, self._key(tenant, file_id), file_decoder)
        return found[0] if found else None

    async def content(self, tenant: str, file_id: str) -> bytes | None:
        if await self.get(tenant, file_id) is None:
            return None
        try:
            result = await self.objects.get(self._object(tenant, file_id))
        except (ObjectNotFoundError, NotFoundError):
            return None
        return bytes(result.data or b"")

    async def list(self, tenant: str) -> list[FileRecord]:
        """The tenant's files, newest first."""
        values = await kvs.scan(self.meta, f"{names.tenant_token(tenant)}.*")
        records = [file_decoder.decode(v) for v in values.values() if v]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        await self.meta.delete(self._key(tenant, file_id))
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            await self.objects.delete(self._object(tenant, file_id))
        return True
