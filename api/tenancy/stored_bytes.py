"""The bytes a tenant scope's stored responses and conversations take, kept in Redis
(`stored.lua`: one hash per scope and the records' expiry times, so what a bucket's retention
drops stops counting). Files count their own (`FileStore.used_bytes`); the two share the
tenant's `storage_bytes`."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.quota import _script
from llmq.schemas import names


class StoredBytes:
    def __init__(self, redis: Redis, retention: float) -> None:
        self._redis = redis
        self._script = redis.register_script(_script("stored.lua"))
        self.retention = retention

    async def record(self, scope: str, record: str, size: int) -> int:
        """`record` (`<kind>:<hex>`) now takes `size` bytes (0: gone); the scope's total."""
        now = time.time()
        expires = int((now + self.retention) * 1000) if self.retention and size else 0
        keys = names.stored_keys(scope)
        with backend_guard():
            return int(await self._script(keys, [int(now * 1000), record, size, expires]))

    async def total(self, scope: str) -> int:
        return await self.record(scope, "", 0) if scope else 0

    async def forget(self, scope: str) -> None:
        """Drop a deleted tenant scope's sizes."""
        with backend_guard():
            await self._redis.delete(*names.stored_keys(scope))
