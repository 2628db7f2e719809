"""Tenants, API keys and prices against a real Valkey."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from llmq.api.tenancy import Price, Tenant, TenantExists, TenantStore, UnknownTenant
from llmq.schemas import names


async def test_tenant_crud(store: TenantStore, tenant_name: str) -> None:
    created = await store.create(
        Tenant(name=tenant_name, models=["gpt-4.1", "llama3:instruct"], rpm=5, tpm=100)
    )
    assert created.created_at > 0 and created.status == "active"
    assert await store.get(tenant_name) == created
    assert tenant_name in [t.name for t in await store.list_tenants()]

    with pytest.raises(TenantExists):
        await store.create(Tenant(name=tenant_name))

    updated = await store.update(tenant_name, {"rpm": 7, "spend_budget_usd": 2.5, "models": []})
    assert (updated.rpm, updated.tpm, updated.spend_budget_usd, updated.models) == (7, 100, 2.5, [])
    assert await store.get(tenant_name) == updated
    assert (await store.suspend(tenant_name)).status == "suspended"
    assert (await store.resume(tenant_name)).status == "active"

    with pytest.raises(ValueError):
        await store.update(tenant_name, {"name": "other"})
    with pytest.raises(msgspec.ValidationError):
        await store.update(tenant_name, {"rpm": -1})
    with pytest.raises(UnknownTenant):
        await store.update(f"{tenant_name}-missing", {"rpm": 1})

    assert await store.delete(tenant_name)
    assert not await store.delete(tenant_name)
    assert await store.get(tenant_name) is None
    assert tenant_name not in [t.name for t in await store.list_tenants()]


@pytest.mark.parametrize("bad", ["", "a:b", "has space", "x" * 65, "-lead"])
async def test_tenant_name_validated(store: TenantStore, bad: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        await store.create(Tenant(name=bad))


async def test_key_create_resolve_revoke(store: TenantStore, tenant_name: str) -> None:
    await store.create(Tenant(name=tenant_name))
    plaintext, record = await store.create_key(tenant_name, label="ci")
    assert plaintext.startswith("sk-llmq-") and len(plaintext) >= len("sk-llmq-") + 43
    assert plaintext.startswith(record.prefix) and len(record.prefix) == len("sk-llmq-") + 4
    assert record.tenant == tenant_name and record.label == "ci"

    resolved = await store.resolve_key(plaintext)
    assert resolved is not None and resolved.name == tenant_name
    assert await store.resolve_key(plaintext + "x") is None
    assert await store.resolve_key("sk-llmq-" + "A" * 43) is None
    assert await store.resolve_key("not-a-key") is None
    assert await store.resolve_key("") is None

    other, other_record = await store.create_key(tenant_name)
    assert other != plaintext
    listed = await store.list_keys(tenant_name)
    assert [k.id for k in listed] == [record.id, other_record.id]

    assert await store.revoke_key(tenant_name, record.id)
    assert not await store.revoke_key(tenant_name, record.id)
    assert await store.resolve_key(plaintext) is None
    assert (await store.resolve_key(other)) is not None

    # A deleted tenant's keys stop resolving too.
    await store.delete(tenant_name)
    assert await store.resolve_key(other) is None

    with pytest.raises(UnknownTenant):
        await store.create_key(tenant_name)


async def test_suspended_tenant_still_resolves(store: TenantStore, tenant_name: str) -> None:
    """resolve says who it is; reserve refuses it (so the api can say why)."""
    await store.create(Tenant(name=tenant_name, status="suspended"))
    plaintext, _ = await store.create_key(tenant_name)
    resolved = await store.resolve_key(plaintext)
    assert resolved is not None and resolved.status == "suspended"


async def test_only_the_hash_is_stored(store: TenantStore, redis: Redis, tenant_name: str) -> None:
    await store.create(Tenant(name=tenant_name))
    plaintext, record = await store.create_key(tenant_name)
    secret = plaintext[len(record.prefix) :]
    assert await redis.exists(names.api_key_key(record.sha256))

    found = False
    async for key in redis.scan_iter(match="*", count=1000):
        blob = key + " " + " ".join(await _values(redis, key))
        assert plaintext not in blob and secret not in blob, key
        found = found or record.sha256 in blob
    assert found


async def test_resolve_uses_constant_time_compare(
    store: TenantStore, tenant_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create(Tenant(name=tenant_name))
    plaintext, _ = await store.create_key(tenant_name)
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert await store.resolve_key(plaintext) is not None
    assert len(calls) == 1


async def test_prices(store: TenantStore, tenant_name: str) -> None:
    model = f"model-{tenant_name}:v1"
    assert await store.get_price(model) is None
    await store.set_price(model, Price(input_per_1m=0.15, output_per_1m=0.6))
    price = await store.get_price(model)
    assert price == Price(input_per_1m=0.15, output_per_1m=0.6)
    assert price.cost(1_000_000, 500_000) == pytest.approx(0.45)
    assert (await store.list_prices())[model] == price
    with pytest.raises(msgspec.ValidationError):
        await store.set_price(model, Price(input_per_1m=-1))
    assert await store.delete_price(model)
    assert not await store.delete_price(model)
    assert model not in await store.list_prices()


async def _values(redis: Redis, key: str) -> list[str]:
    """Every value under `key`, as text, whatever its type. Read undecoded: the Valkey is
    shared with other tests, whose values may be binary (msgpack, compressed bodies)."""
    r: Any = redis  # redis-py's return types are unions of bytes and str
    kind = await r.type(key)
    read = {
        "string": ("GET",),
        "hash": ("HGETALL",),
        "set": ("SMEMBERS",),
        "zset": ("ZRANGE", 0, -1),
        "list": ("LRANGE", 0, -1),
        "stream": ("XRANGE", "-", "+"),
    }.get(kind)
    if read is None:
        return []
    got = await r.execute_command(*read[:1], key, *read[1:], **{NEVER_DECODE: True})
    if kind == "string":
        raw: list[Any] = [got]
    elif kind == "hash":
        raw = [_text(k) + "=" + _text(v) for k, v in got.items()]
    elif kind == "stream":
        raw = [_text(k) + "=" + _text(v) for _, fields in got for k, v in fields.items()]
    else:
        raw = list(got)
    return [_text(v) for v in raw]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def test_a_field_written_by_a_newer_version_is_skipped(
    store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    """Rolling upgrade: a replica reads a tenant that a newer replica stored with more fields."""
    await store.create(Tenant(name=tenant_name, rpm=7))
    await redis.hset(names.tenant_key(tenant_name), "colour", "teal")
    tenant = await store.get(tenant_name)
    assert tenant is not None and tenant.rpm == 7


async def test_one_damaged_tenant_does_not_hide_the_others(
    store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    await store.create(Tenant(name=tenant_name))
    damaged = f"{tenant_name}-damaged"
    await store.create(Tenant(name=damaged))
    await redis.hset(names.tenant_key(damaged), "rpm", "lots")
    listed = {t.name for t in await store.list_tenants()}
    assert tenant_name in listed and damaged not in listed
