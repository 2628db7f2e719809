"""Tenants, their API keys and the price table, in Redis.

A key's plaintext is returned once by `create_key` and never stored: Redis holds only its
SHA-256 (the lookup key) and a short display prefix. Keys are 256-bit random, so a plain
hash (no salt, no slow KDF) is enough and keeps `resolve_key` to one lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis

from llmq.api.tenancy.client import is_cluster
from llmq.api.tenancy.errors import TenantExists, UnknownTenant, backend_guard
from llmq.api.tenancy.models import (
    TENANT_MUTABLE_FIELDS,
    ApiKey,
    KeySettings,
    Price,
    Tenant,
)
from llmq.schemas import names

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-llmq-"
KEY_RANDOM_BYTES = 32
DISPLAY_CHARS = 4
TENANT_ID_BYTES = 8
"""Characters of the random part kept for display (`sk-llmq-AbCd…`)."""

# Write a tenant hash only if it is absent (create) or present (update), in one step.
_PUT_TENANT = """
local exists = redis.call('EXISTS', KEYS[1]) == 1
if (ARGV[1] == 'create') == exists then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[2]) end
return 1
"""


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tenant_fields(tenant: Tenant) -> list[str]:
    data = msgspec.to_builtins(tenant)
    data["models"] = msgspec.json.encode(tenant.models).decode()
    out: list[str] = []
    for field, value in data.items():
        out += [field, str(value)]
    return out


def _tenant_from_hash(raw: Mapping[Any, Any]) -> Tenant:
    """A stored tenant; fields a newer version wrote are skipped, so replicas of two versions
    can share one Redis during a rolling upgrade (input from the admin API stays strict)."""
    known = Tenant.__struct_fields__
    data: dict[str, Any] = {field: _text(v) for k, v in raw.items() if (field := _text(k)) in known}
    data["models"] = msgspec.json.decode(data.get("models") or "[]")
    return msgspec.convert(data, Tenant, strict=False)


def _validated(tenant: Tenant) -> Tenant:
    """Struct construction skips constraints; a round trip applies them."""
    return msgspec.convert(msgspec.to_builtins(tenant), Tenant)


class TenantStore:
    """CRUD of tenants, API keys and prices; every method raises `QuotaBackendDown` when
    Redis is unreachable."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._put = redis.register_script(_PUT_TENANT)

    # --- tenants --------------------------------------------------------------------------

    async def create(self, tenant: Tenant) -> Tenant:
        """Store a new tenant with a new id; `TenantExists` if the name is taken."""
        tenant = _validated(tenant)
        tenant = msgspec.structs.replace(
            tenant,
            id="t" + secrets.token_hex(TENANT_ID_BYTES),
            created_at=tenant.created_at or time.time(),
        )
        await self._write("create", tenant)
        return tenant

    async def get(self, name: str) -> Tenant | None:
        with backend_guard():
            raw = await self._redis.hgetall(names.tenant_key(name))
        return _tenant_from_hash(raw) if raw else None

    async def scope(self, name: str) -> str:
        """The namespace of the tenant's durable data (`names.tenant_scope`); the name
        itself for a tenant without a record or an id."""
        with backend_guard():
            tenant_id = await self._redis.hget(names.tenant_key(name), "id")
        return names.tenant_scope(name, _text(tenant_id) if tenant_id else "")

    async def list_tenants(self) -> list[Tenant]:
        with backend_guard():
            members = await self._redis.smembers(names.TENANTS_KEY)
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in sorted(_text(m) for m in members):
                    pipe.hgetall(names.tenant_key(name))
                rows = await pipe.execute()
        tenants = []
        for raw in rows:
            if not raw:
                continue
            try:
                tenants.append(_tenant_from_hash(raw))
            except (msgspec.ValidationError, msgspec.DecodeError):
                # One damaged record must not hide every other tenant from the operator.
                name = next((_text(v) for k, v in raw.items() if _text(k) == "name"), "?")
                log.error("tenant record %s cannot be read; skipped", name)
        return tenants

    async def update(self, name: str, changes: Mapping[str, Any]) -> Tenant:
        """Change some fields (not `name` or `created_at`); validated like `create`.
        `UnknownTenant` if absent, `ValueError` for a field that cannot change."""
        bad = set(changes) - TENANT_MUTABLE_FIELDS
        if bad:
            raise ValueError(f"cannot change: {', '.join(sorted(bad))}")
        current = await self.get(name)
        if current is None:
            raise UnknownTenant(name)
        data = msgspec.to_builtins(current) | dict(changes)
        tenant = msgspec.convert(data, Tenant)
        await self._write("update", tenant)
        return tenant

    async def suspend(self, name: str) -> Tenant:
        """Refuse every new request of the tenant (reserve answers `suspended`) at once."""
        return await self.update(name, {"status": "suspended"})

    async def resume(self, name: str) -> Tenant:
        return await self.update(name, {"status": "active"})

    async def delete(self, name: str) -> bool:
        """Remove the tenant, its keys and its live quota state. Usage and ledger stay for
        audit (they expire / are capped on their own). Its scope goes to the deleted
        scopes, whose files, jobs and batches the api purges (`deleted_scopes`)."""
        scope = await self.scope(name)
        with backend_guard():
            keys = await self._redis.hgetall(names.tenant_api_keys_key(name))
            async with self._redis.pipeline(transaction=True) as pipe:
                for value in keys.values():
                    record = msgspec.json.decode(_text(value), type=ApiKey)
                    pipe.delete(names.api_key_key(record.sha256))
                pipe.delete(
                    names.tenant_api_keys_key(name),
                    names.key_last_used_key(name),
                    names.inflight_key(name),
                )
                pipe.srem(names.TENANTS_KEY, name)
                pipe.zadd(names.DELETED_SCOPES_KEY, {scope: time.time()})
                pipe.delete(names.tenant_key(name))
                results = await pipe.execute()
        return bool(results[-1])

    async def deleted_scopes(self) -> dict[str, float]:
        """Scopes of deleted tenants whose durable data is still purged, with when each
        tenant was deleted (unix seconds)."""
        with backend_guard():
            rows: list[Any] = await self._redis.zrange(
                names.DELETED_SCOPES_KEY, 0, -1, withscores=True
            )
        return {_text(row[0]): float(row[1]) for row in rows}

    async def forget_deleted_scope(self, scope: str) -> None:
        """Nothing can be written under the scope any more, and it is purged."""
        with backend_guard():
            await self._redis.zrem(names.DELETED_SCOPES_KEY, scope)

    async def _write(self, mode: str, tenant: Tenant) -> None:
        # In a Cluster the tenant set is in another slot: added to right after, not inside.
        cluster = is_cluster(self._redis)
        with backend_guard():
            done = await self._put(
                keys=[names.tenant_key(tenant.name), *([] if cluster else [names.TENANTS_KEY])],
                args=[mode, tenant.name, *_tenant_fields(tenant)],
            )
            if done and cluster:
                await self._redis.sadd(names.TENANTS_KEY, tenant.name)
        if not done:
            raise TenantExists(tenant.name) if mode == "create" else UnknownTenant(tenant.name)

    # --- API keys ---------------------------------------------------------------------------

    async def create_key(
        self, tenant: str, label: str = "", settings: KeySettings | None = None
    ) -> tuple[str, ApiKey]:
        """A new key for `tenant`: the plaintext (show it once, never store or log it) and the
        stored record. `settings`: owner, expiry, models and limits of its own (validated;
        `label` wins over theirs when given). `UnknownTenant` if the tenant does not exist."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        given = msgspec.to_builtins(settings or KeySettings())
        if label:
            given["label"] = label
        checked = msgspec.convert(given, KeySettings)  # applies the constraints
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            tenant=tenant,
            prefix=plaintext[: len(KEY_PREFIX) + DISPLAY_CHARS],
            sha256=hash_key(plaintext),
            created_at=time.time(),
            **{f: getattr(checked, f) for f in KeySettings.__struct_fields__},
        )
        encoded = msgspec.json.encode(record)
        with backend_guard():
            if not await self._redis.exists(names.tenant_key(tenant)):
                raise UnknownTenant(tenant)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(names.api_key_key(record.sha256), encoded, nx=True)
                pipe.hset(names.tenant_api_keys_key(tenant), record.id, encoded)
                await pipe.execute()
        return plaintext, record

    async def list_keys(self, tenant: str) -> list[ApiKey]:
        """The tenant's keys, oldest first, each with when it was last used."""
        with backend_guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(names.tenant_api_keys_key(tenant))
                pipe.hgetall(names.key_last_used_key(tenant))
                raw, used = await pipe.execute()
        last_used = {_text(k): int(v) / 1000 for k, v in used.items()}
        keys = [
            msgspec.structs.replace(record, last_used_at=last_used.get(record.id, 0.0))
            for record in (msgspec.json.decode(_text(v), type=ApiKey) for v in raw.values())
        ]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_key(self, tenant: str, key_id: str) -> bool:
        """Stop a key from resolving at once; False if the tenant has no such key."""
        with backend_guard():
            value = await self._redis.hget(names.tenant_api_keys_key(tenant), key_id)
            if value is None:
                return False
            record = msgspec.json.decode(_text(value), type=ApiKey)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(names.api_key_key(record.sha256))
                pipe.hdel(names.tenant_api_keys_key(tenant), key_id)
                pipe.hdel(names.key_last_used_key(tenant), key_id)
                await pipe.execute()
        return True

    async def resolve_key(self, plaintext: str) -> Tenant | None:
        """The tenant a bearer key belongs to, or None (unknown, revoked, tenant deleted).
        A suspended tenant is returned as such; `reserve` refuses it."""
        found = await self.resolve(plaintext)
        return None if found is None else found[0]

    async def resolve(self, plaintext: str) -> tuple[Tenant, ApiKey] | None:
        """The tenant and key record of a bearer key, or None (unknown, revoked, tenant
        deleted). Expiry is the caller's to check (`ApiKey.expired`): a cached record
        expires on time without a lookup."""
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 256:
            return None
        digest = hash_key(plaintext)
        with backend_guard():
            value = await self._redis.get(names.api_key_key(digest))
            if value is None:
                return None
            record = msgspec.json.decode(_text(value), type=ApiKey)
            # The lookup already matched by hash; compare again without timing leaks anyway.
            if not hmac.compare_digest(record.sha256, digest):
                return None
            tenant = await self.get(record.tenant)
        return None if tenant is None else (tenant, record)

    # --- prices -------------------------------------------------------------------------------

    async def set_price(self, model: str, price: Price) -> Price:
        price = msgspec.convert(msgspec.to_builtins(price), Price)
        with backend_guard():
            await self._redis.hset(names.PRICES_KEY, model, msgspec.json.encode(price))
        return price

    async def get_price(self, model: str) -> Price | None:
        with backend_guard():
            value = await self._redis.hget(names.PRICES_KEY, model)
        return None if value is None else msgspec.json.decode(_text(value), type=Price)

    async def list_prices(self) -> dict[str, Price]:
        with backend_guard():
            raw = await self._redis.hgetall(names.PRICES_KEY)
        return {
            _text(k): msgspec.json.decode(_text(v), type=Price)
            for k, v in sorted(raw.items(), key=lambda kv: _text(kv[0]))
        }

    async def delete_price(self, model: str) -> bool:
        with backend_guard():
            return bool(await self._redis.hdel(names.PRICES_KEY, model))
