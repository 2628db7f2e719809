"""The cache store on a real Valkey: bounds per tenant scope, evictions, sealing, purge
(api/cache/store.py, api/cache/put.lua)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmq.api.cache.store import CacheStore, Entry
from llmq.api.tenancy import connect
from llmq.schemas import names
from llmq.schemas.settings import CacheSettings
from tests.stack import unique


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    # as the api makes it, with a longer command timeout: 500 puts at once on a loaded machine
    # may wait more than the api's 1 s for their turn, and these tests are about bounds
    client = connect(redis_server.url, decode_responses=False, timeout=10.0)
    yield client
    await client.aclose()


def _entry(text: str = "hello") -> Entry:
    body = b'{"choices":[{"message":{"content":"' + text.encode() + b'"}}]}'
    return Entry(kind="chat", stream=False, created=time.time(), model="m", body=body)


async def test_an_entry_round_trips_and_expires(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings())
    scope = unique("t")
    stored = await store.put(scope, "d1", _entry(), ttl=0.3)
    assert stored.written > 0 and stored.evicted == 0
    got = await store.get(scope, "d1")
    assert got is not None and got.body == _entry().body
    assert await store.get(unique("other"), "d1") is None  # another tenant: another key
    await asyncio.sleep(0.5)
    assert await store.get(scope, "d1") is None


async def test_10000_distinct_keys_stay_within_the_tenant_bounds(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings(cache_tenant_max_entries=500,
                                            cache_tenant_max_bytes=200_000))  # fmt: skip
    scope = unique("t")
    started = time.monotonic()
    evicted = 0  # an hour's TTL: on a slow machine no entry expires (expiry is no eviction)
    for start in range(0, 10_000, 500):
        results = await asyncio.gather(
            *(store.put(scope, f"k{i}", _entry(f"answer {i}"), ttl=3600)
              for i in range(start, start + 500))
        )  # fmt: skip
        evicted += sum(r.evicted for r in results)
    took = time.monotonic() - started
    assert await redis.zcard(names.cache_index_key(scope)) <= 500
    keys = [k async for k in redis.scan_iter(match=names.cache_scope_pattern(scope), count=1000)]
    assert len(keys) <= 500 + 2
    size = int(await redis.hget(names.cache_sizes_key(scope), "#bytes"))
    assert size <= 200_000
    assert evicted >= 10_000 - 500
    assert await store.get(scope, "k9999") is not None  # the newest stays
    print(f"10,000 distinct puts in {took:.2f} s")
    await store.purge(scope)


async def test_an_entry_too_large_is_not_stored(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings(cache_max_entry_bytes=1000))
    scope = unique("t")
    stored = await store.put(scope, "big", _entry("x" * 5000), ttl=60)
    assert stored.written == 0
    assert await store.get(scope, "big") is None


async def test_sealed_at_rest_and_bound_to_its_key(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings(cache_key="a passphrase"))
    scope, other = unique("t"), unique("t")
    await store.put(scope, "d", _entry("very secret answer"), ttl=60)
    raw = await redis.get(names.cache_entry_key(scope, "d"))
    assert raw is not None and b"very secret answer" not in raw
    got = await store.get(scope, "d")
    assert got is not None and b"very secret answer" in got.body
    # copied under another tenant's key, it does not open
    await redis.set(names.cache_entry_key(other, "d"), raw)
    assert await store.get(other, "d") is None
    # another key does not open it either
    assert await CacheStore(redis, CacheSettings(cache_key="another")).get(scope, "d") is None
    assert await CacheStore(redis, CacheSettings()).get(scope, "d") is None


async def test_purge_deletes_every_key_of_one_scope_only(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings())
    scope, other = unique("t"), unique("t")
    for i in range(3):
        await store.put(scope, f"d{i}", _entry(), ttl=60)
    await store.put(other, "d0", _entry(), ttl=60)
    assert await store.purge(scope) == {"cache_keys": 5}  # 3 entries, index, sizes
    assert [k async for k in redis.scan_iter(match=names.cache_scope_pattern(scope))] == []
    assert await store.get(other, "d0") is not None
