"""Who is calling: the tenant behind a request, by bearer API key or trusted header.

Answers as OpenAI does: no key → 401 `missing_api_key`; a key that does not resolve
(unknown, revoked, expired, its tenant deleted) → 401 `invalid_api_key`; a suspended tenant
→ 403 `suspended`. The key's id goes with the request (`key_id`) so the quota script applies
the key's own limits inside the tenant's (and refuses a key revoked since it was cached).
Keys are looked up by their SHA-256 (the store compares in constant time); an
active tenant's record is cached for `key_cache_ttl` seconds, keyed by the key's hash, so
the hot path costs no Redis round trip. The plaintext key is never stored, logged or kept
in the cache.

Concurrent requests with a cold cache share one lookup, which runs in a task of its own
with a deadline: whatever it ends with (a tenant, none, Redis down, a record this version
cannot read, a Redis error) reaches every request waiting on it, so none can hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request

from llmq.api.errors import ApiError
from llmq.api.tenancy import ApiKey, QuotaBackendDown, Tenant, TenantStore
from llmq.api.tenancy.models import NORMAL_RANK, priority_rank
from llmq.api.tenancy.store import hash_key
from llmq.api.tenancy.store_wait import StoreWait
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)

ANONYMOUS = ""
"""The tenant of auth_mode=none: no tenancy, no quotas."""

CACHE_MAX = 100_000
"""Cached records at most; the cache is emptied when it would grow past this."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request acts for, and the models it may use (empty: every model)."""

    tenant: str
    models: frozenset[str] = frozenset()
    key_id: str = ""
    """The API key the request came with ('' in header and none modes)."""

    def may_use(self, model: str) -> bool:
        """`model` is the resolved name (aliases point to it), as the quota script checks."""
        return not self.models or model in self.models


EVERYONE = Caller(ANONYMOUS)


@dataclass(frozen=True, slots=True)
class _Failure:
    """How a lookup failed; each waiter raises its own `ApiError` from it."""

    message: str
    code: str

    def error(self) -> ApiError:
        return ApiError(503, self.message, self.code, headers={"retry-after": "1"})


_Record = Tenant | tuple[Tenant, ApiKey]
_Outcome = _Record | None | _Failure
KEY_ID_STATE = "llmq_key_id"
"""`request.state` attribute holding the id of the key the request was authenticated by."""
CACHE_TTL_STATE = "llmq_key_cache_ttl"
"""`request.state` attribute holding the key's own response-cache TTL (seconds, 0: none)."""
RANK_STATE = "llmq_priority_rank"
"""`request.state` attribute holding the priority rank of the key's requests."""
_DOWN = _Failure("the tenant store is unavailable", "tenant_store_down")
_BROKEN = _Failure("the tenant store could not answer this lookup", "tenant_store_error")


def _missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. Send `Authorization: Bearer sk-llmq-...`.",
        "missing_api_key",
        type="invalid_request_error",
    )


def _invalid_key() -> ApiError:
    return ApiError(
        401, "Incorrect API key provided.", "invalid_api_key", type="invalid_request_error"
    )


class Authenticator:
    def __init__(
        self, settings: Settings, store: TenantStore, wait: StoreWait | None = None
    ) -> None:
        self.mode = settings.api.auth_mode
        self.header = settings.tenancy.tenant_header
        self.trusted = frozenset(settings.tenancy.trusted_tenants)
        self.default_tenant = settings.tenancy.default_tenant
        self.cache_ttl = settings.tenancy.key_cache_ttl
        # A lookup is at most two Redis commands plus the wait for a pooled connection,
        # each bounded by redis_timeout; past three of them it is not coming.
        self.lookup_deadline = 3 * settings.connection.redis_timeout
        self.store = store
        self.wait = wait
        """Waits out a short store outage (a failover) before the 503; None: no wait."""
        self._cache: dict[str, tuple[_Record, float]] = {}
        self._lookups: dict[str, asyncio.Task[_Outcome]] = {}

    async def tenant(self, request: Request) -> str:
        """The tenant's name (the hot path: header mode reads no record)."""
        if self.mode == "none":
            return ANONYMOUS
        if self.mode == "header":
            return self._from_header(request)
        return (await self._from_key(request))[0].name

    @staticmethod
    def key_id(request: Request) -> str:
        """The id of the API key `tenant` or `caller` authenticated this request by ('' for
        none), for the quota script."""
        return str(getattr(request.state, KEY_ID_STATE, ""))

    @staticmethod
    def key_cache_ttl(request: Request) -> float:
        """The response-cache TTL of the key that authenticated this request (0: none)."""
        return float(getattr(request.state, CACHE_TTL_STATE, 0.0))

    async def rank(self, request: Request) -> int:
        """The priority rank of an authenticated request (`tenancy.models.priority_rank`):
        the key's class capped by its tenant's; in header mode the tenant's (from the
        cached record; normal when it cannot be read: the class never refuses a request)."""
        if self.mode == "keys":
            return int(getattr(request.state, RANK_STATE, NORMAL_RANK))
        if self.mode == "none":
            return NORMAL_RANK
        name = self._from_header(request)
        try:
            record = await self._record("tenant:" + name, lambda: self.store.get(name))
        except ApiError:
            return NORMAL_RANK
        tenant = record[0] if isinstance(record, tuple) else record
        return NORMAL_RANK if tenant is None else priority_rank(tenant.priority)

    async def caller(self, request: Request) -> Caller:
        """The tenant and the models it may use (reads the tenant's record in every mode
        but `none`)."""
        if self.mode == "none":
            return EVERYONE
        if self.mode == "header":
            name = self._from_header(request)
            record = await self._record("tenant:" + name, lambda: self.store.get(name))
            if record is None:
                raise ApiError(403, f"tenant `{name}` does not exist", "unknown_tenant")
            if isinstance(record, tuple):  # never: a tenant lookup returns a tenant
                record = record[0]
            self._refuse_suspended(record)
            return Caller(record.name, frozenset(record.models))
        tenant, key = await self._from_key(request)
        models = frozenset(tenant.models)
        if key.models:
            models = models & frozenset(key.models) if models else frozenset(key.models)
            if not models:  # disjoint lists: nothing, not everything
                models = frozenset({""})
        return Caller(tenant.name, models, key.id)

    def _from_header(self, request: Request) -> str:
        name = request.headers.get(self.header) or self.default_tenant
        if not name:
            raise ApiError(401, f"missing {self.header} header", "missing_tenant")
        if name not in self.trusted:
            raise ApiError(403, f"tenant `{name}` is not allowed", "tenant_not_allowed")
        return name

    async def _from_key(self, request: Request) -> tuple[Tenant, ApiKey]:
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if not auth:  # Anthropic's clients send `x-api-key` (docs/anthropic.md)
            scheme, key = "bearer", request.headers.get("x-api-key", "").strip()
        if scheme.lower() != "bearer" or not key:
            raise _missing_key()
        record = await self._record("key:" + hash_key(key), lambda: self.store.resolve(key))
        # Expiry is checked on every request, cached or not: a key stops at its second.
        if not isinstance(record, tuple) or record[1].expired(time.time()):
            raise _invalid_key()
        self._refuse_suspended(record[0])
        setattr(request.state, KEY_ID_STATE, record[1].id)
        setattr(request.state, CACHE_TTL_STATE, record[1].cache_ttl)
        setattr(request.state, RANK_STATE, priority_rank(record[0].priority, record[1].priority))
        return record

    @staticmethod
    def _refuse_suspended(record: Tenant) -> None:
        if record.status != "active":
            raise ApiError(403, "This tenant is suspended.", "suspended", type="permission_error")

    async def _record(
        self, cache_key: str, fetch: Callable[[], Awaitable[_Record | None]]
    ) -> _Record | None:
        """The cached record, else the outcome of the one lookup in flight for `cache_key`.
        Only active tenants are cached: a resumed tenant is served again at once."""
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > now:
            return cached[0]
        task = self._lookups.get(cache_key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(fetch))
            self._lookups[cache_key] = task
            task.add_done_callback(lambda done: self._forget(cache_key, done))
        # A waiter that goes away (client disconnect) must not cancel the others' lookup.
        outcome = await asyncio.shield(task)
        if isinstance(outcome, _Failure):
            raise outcome.error()
        tenant = outcome[0] if isinstance(outcome, tuple) else outcome
        if outcome is None or tenant is None or tenant.status != "active":
            self._cache.pop(cache_key, None)
        elif self.cache_ttl > 0:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[cache_key] = (outcome, time.monotonic() + self.cache_ttl)
        return outcome

    def forget_tenant(self, name: str) -> int:
        """Drop every cached record of tenant `name` (its keys' and its own): the next
        request looks it up again. Returns how many were dropped."""
        stale = [
            key
            for key, (record, _) in self._cache.items()
            if (record[0] if isinstance(record, tuple) else record).name == name
        ]
        for key in stale:
            del self._cache[key]
        return len(stale)

    def _forget(self, cache_key: str, task: asyncio.Task[_Outcome]) -> None:
        if self._lookups.get(cache_key) is task:
            del self._lookups[cache_key]

    async def _lookup(self, fetch: Callable[[], Awaitable[_Record | None]]) -> _Outcome:
        """Never raises: every end of the lookup is an outcome all its waiters share."""

        async def once() -> _Record | None:
            async with asyncio.timeout(self.lookup_deadline):
                return await fetch()

        try:
            return await (once() if self.wait is None else self.wait.run(once))
        except QuotaBackendDown:
            return _DOWN
        except TimeoutError:
            log.warning("key lookup failed: no answer within %.1fs", self.lookup_deadline)
            return _DOWN
        except Exception as exc:
            # The cause (a record this version cannot read, a Redis error reply) names no
            # key: Redis holds only hashes, and the plaintext is not in the exception.
            log.error("key lookup failed: %s: %s", type(exc).__name__, exc)
            return _BROKEN
