"""Calls that hold no tokens (list calls) counted against the RPM of the tenant and its key.

The same GCRA arrival times as `quota.lua` (`request.lua` moves only the request one), so a
list call and a chat request draw on one rate; nothing is reserved, nothing to release.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.quota import _script
from llmq.api.tenancy.script_keys import key_scope
from llmq.schemas import names

UNKNOWN = -1.0
"""`take`'s answer for a tenant or key that does not exist (any more)."""


class RequestRate:
    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_script("request.lua"))

    async def take(self, tenant: str, key_id: str = "", now: float | None = None) -> float:
        """Count one request; 0 when counted, else the seconds until one fits, or `UNKNOWN`.
        Raises `QuotaBackendDown` when Redis is unreachable."""
        now = time.time() if now is None else now
        keys = [
            names.tenant_key(tenant),
            names.rate_key(tenant),
            names.tenant_api_keys_key(tenant),
            key_scope(tenant, key_id, "", "")[1],
        ]
        with backend_guard():
            waited = int(await self._take(keys, [int(now * 1000), key_id]))
        return UNKNOWN if waited < 0 else waited / 1000
