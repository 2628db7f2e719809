"""The bytes a tenant scope's stored responses and conversations take, kept in Redis
(`stored.lua`: one hash per scope and the records' expiry times, so what a bucket's retention
drops stops counting). Files are counted the same way under keys of their own
(`api/batch/file_bytes.py`); the two share the tenant's `storage_bytes`."""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.quota import _script
from llmq.schemas import names


class StoredBytes:
    def __init__(
        self,
        redis: Redis,
        retention: float,
        keys: Callable[[str], list[str]] = names.stored_keys,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_script("stored.lua"))
        self.retention = retention
        self.keys = keys

    async def record(
        self, scope: str, record: str, size: int, *, expires_at: float | None = None
    ) -> int:
        """`record` (`<kind>:<hex>`) now takes `size` bytes (0: gone); the scope's total.
        `expires_at` (unix seconds): when it stops counting, instead of after `retention`."""
        now = time.time()
        expires = int((now + self.retention) * 1000) if self.retention and size else 0
        if expires_at is not None and size:
            expires = int(expires_at * 1000)
        keys = self.keys(scope)
        with backend_guard():
            return int(await self._script(keys, [int(now * 1000), record, size, expires]))

    async def total(self, scope: str) -> int:
        return await self.record(scope, "", 0) if scope else 0

    async def forget(self, scope: str) -> None:
        """Drop a deleted tenant scope's sizes."""
        with backend_guard():
            await self._redis.delete(*self.keys(scope))
