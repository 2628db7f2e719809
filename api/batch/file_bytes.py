"""The bytes each tenant scope's files take, counted in Valkey as files are written and
deleted, so an upload's quota check reads one number instead of every file record.

One hash per scope (`FILE_KEYS`): file id -> bytes, and `_total`, kept by the script that
counts stored responses (`api/tenancy/stored_bytes.py`). Setting a file's size
replaces what it counted before in one atomic step, so concurrent uploads and deletes, and a
delete repeated, leave the total exact; a file that expires stops counting at its expiry.
A scope whose files came before the count, or whose count a Valkey error interrupted, is
counted once from its file records (`recount`), then kept.
"""

from __future__ import annotations

import functools
import logging

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.stored_bytes import StoredBytes
from llmq.dispatcher.batch.files import FileStore
from llmq.schemas import names

log = logging.getLogger(__name__)

FILE_KEYS = functools.partial(names.stored_keys, of="files")
COUNTED = "_counted"
"""Field of a scope's hash: its files have been counted from their records."""


class FileBytes:
    def __init__(self, redis: Redis, files: FileStore) -> None:
        self._redis = redis
        self._sizes = StoredBytes(redis, 0, keys=FILE_KEYS)
        self.files = files
        self._unsure: set[str] = set()
        """Scopes a write could not count here: recounted before their total is read."""

    async def record(self, scope: str, file_id: str, size: int, expires_at: int | None) -> None:
        """A file now takes `size` bytes (0: gone). A failure is logged and the scope is
        recounted later: the file's write stands."""
        if not scope:
            return
        try:
            await self._sizes.record(scope, file_id, size, expires_at=expires_at)
        except Exception as exc:
            log.warning("the bytes of a file were not counted: %s", type(exc).__name__)
            self._unsure.add(scope)

    async def total(self, scope: str) -> int:
        """What the scope's live files take. Raises `QuotaBackendDown` when Valkey is away."""
        if not scope:
            return 0
        with backend_guard():
            counted = await self._redis.hexists(FILE_KEYS(scope)[0], COUNTED)
        if scope in self._unsure or not counted:
            await self.recount(scope)
        return await self._sizes.total(scope)

    async def recount(self, scope: str) -> None:
        """Bring the count in line with the file records. A file is counted only after its
        record is read, and read again after it is counted: a delete that ran meanwhile is
        seen, whichever of the two wrote last."""
        live = {r.id: r for r in await self.files.list(scope)}
        key = FILE_KEYS(scope)[0]
        with backend_guard():
            held = await self._redis.hgetall(key)
        counted = {str(k): int(v) for k, v in held.items() if not str(k).startswith("_")}
        for file_id in counted.keys() - live.keys():
            if await self.files.get(scope, file_id) is None:
                await self._sizes.record(scope, file_id, 0)
        for file_id, record in live.items():
            if counted.get(file_id) != record.bytes:
                await self._sizes.record(scope, file_id, record.bytes, expires_at=record.expires_at)
                if await self.files.get(scope, file_id) is None:
                    await self._sizes.record(scope, file_id, 0)
        with backend_guard():
            await self._redis.hset(key, COUNTED, 1)
        self._unsure.discard(scope)

    async def forget(self, scope: str) -> None:
        """Drop a deleted tenant scope's count."""
        await self._sizes.forget(scope)
        self._unsure.discard(scope)
