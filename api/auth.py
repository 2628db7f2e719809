"""Who is calling: the tenant behind a request, by bearer API key or trusted header.

Keys are looked up by their SHA-256 (the store compares in constant time); a resolved key
is cached for `key_cache_ttl` seconds, keyed by its hash, so the hot path costs no Redis
round trip. The plaintext key is never stored, logged or kept in the cache.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from llmq.api.errors import ApiError
from llmq.api.tenancy import QuotaBackendDown, TenantStore
from llmq.api.tenancy.store import hash_key
from llmq.schemas.settings import Settings

_DOWN = "\x00down"

ANONYMOUS = ""
"""The tenant of auth_mode=none: no tenancy, no quotas."""


class Authenticator:
    def __init__(self, settings: Settings, store: TenantStore) -> None:
        self.mode = settings.api.auth_mode
        self.header = settings.tenancy.tenant_header
        self.trusted = frozenset(settings.tenancy.trusted_tenants)
        self.default_tenant = settings.tenancy.default_tenant
        self.cache_ttl = settings.tenancy.key_cache_ttl
        self.store = store
        self._cache: dict[str, tuple[str, float]] = {}
        self._lookups: dict[str, asyncio.Future[str | None]] = {}

    async def tenant(self, request: Request) -> str:
        if self.mode == "none":
            return ANONYMOUS
        if self.mode == "header":
            return self._from_header(request)
        return await self._from_key(request)

    def _from_header(self, request: Request) -> str:
        name = request.headers.get(self.header) or self.default_tenant
        if not name:
            raise ApiError(401, f"missing {self.header} header", "missing_tenant")
        if name not in self.trusted:
            raise ApiError(403, f"tenant `{name}` is not allowed", "tenant_not_allowed")
        return name

    async def _from_key(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(
                401,
                "You didn't provide an API key. Send `Authorization: Bearer sk-llmq-...`.",
                "missing_api_key",
            )
        digest = hash_key(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        tenant = await self._resolve_once(digest, key)
        if tenant is None:
            self._cache.pop(digest, None)
            raise ApiError(403, "Incorrect API key provided.", "invalid_api_key")
        if self.cache_ttl > 0:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (tenant, now + self.cache_ttl)
        return tenant

    async def _resolve_once(self, digest: str, key: str) -> str | None:
        """One Redis lookup per key at a time: a burst of requests with a cold cache shares it."""
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._lookups[digest] = pending
            try:
                tenant = await self.store.resolve_key(key)
                pending.set_result(tenant.name if tenant else None)
            except QuotaBackendDown:
                pending.set_result(_DOWN)
            finally:
                del self._lookups[digest]
        result = await asyncio.shield(pending)
        if result is _DOWN:
            raise ApiError(503, "the tenant store is unavailable", "tenant_store_down")
        return result
