"""The bytes of a tenant's files are counted in Valkey as they are written and deleted:
exact under concurrent uploads and (repeated) deletes, files stored before the count are
counted once, an expired file stops counting (a real nats-server and a real Valkey)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from redis.asyncio import Redis

from llmq.api.batch import stores
from llmq.api.batch.file_bytes import COUNTED, FILE_KEYS, FileBytes
from llmq.api.tenancy import connect as connect_redis
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.connection import connect
from llmq.embedded import EmbeddedNats, EmbeddedRedis
from llmq.schemas import names
from tests.stack import unique


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, "test")
    yield client
    await client.close()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = connect_redis(redis_server.url, timeout=10.0)
    yield client
    await client.aclose()


async def _stores(nc: Client, redis: Redis) -> tuple[FileStore, FileStore, FileBytes]:
    """(a file store that counts, one that does not, the count)."""
    js = nc.jetstream()
    meta = (await stores.batch_buckets(js, 3600))[names.FILE_META_BUCKET]
    objects = await stores.files_store(js)
    counting = FileStore(objects, meta)
    sizes = FileBytes(redis, counting)
    counting.meter = sizes
    return counting, FileStore(objects, meta), sizes


async def _live_bytes(files: FileStore, scope: str) -> int:
    return sum(r.bytes for r in await files.list(scope))


async def test_concurrent_uploads_and_deletes_keep_the_count_exact(
    nc: Client, redis: Redis
) -> None:
    files, _, sizes = await _stores(nc, redis)
    scope = unique("acme") + "~t1"
    assert await sizes.total(scope) == 0
    rng = random.Random(7)
    first = await asyncio.gather(
        *(files.put(scope, b"a" * rng.randint(1, 5000), "a.txt", "user_data") for _ in range(20))
    )
    doomed = [r.id for r in first[:12]]
    # New uploads, deletes and the same deletes again, all at once.
    await asyncio.gather(
        *(files.put(scope, b"b" * rng.randint(1, 5000), "b.txt", "user_data") for _ in range(20)),
        *(files.delete(scope, file_id) for file_id in doomed for _ in range(3)),
    )
    live = await files.list(scope)
    assert len(live) == 28
    assert await sizes.total(scope) == sum(r.bytes for r in live) > 0
    # the count is read, not recounted: the records are not scanned again
    assert await redis.hget(FILE_KEYS(scope)[0], COUNTED) == "1"
    await asyncio.gather(*(files.delete(scope, r.id) for r in live))
    assert await sizes.total(scope) == 0


async def test_files_stored_before_the_count_are_counted_once(nc: Client, redis: Redis) -> None:
    counting, plain, sizes = await _stores(nc, redis)
    scope = unique("old") + "~t2"
    old = [await plain.put(scope, b"o" * n, "o.txt", "user_data") for n in (100, 2000, 30)]
    assert await sizes.total(scope) == 2130
    new = await counting.put(scope, b"n" * 500, "n.txt", "user_data")
    assert await counting.delete(scope, old[1].id)
    assert await sizes.total(scope) == 100 + 30 + 500 == await _live_bytes(counting, scope)
    # A delete the count did not hear of (a write that could not be counted) is caught up
    # with by the recount that follows it.
    assert await plain.delete(scope, new.id)
    sizes._unsure.add(scope)
    assert await sizes.total(scope) == 130


async def test_an_expired_file_stops_counting(nc: Client, redis: Redis) -> None:
    files, _, sizes = await _stores(nc, redis)
    scope = unique("exp") + "~t3"
    await files.put(scope, b"k" * 300, "keep.txt", "user_data")
    await files.put(scope, b"e" * 700, "gone.txt", "user_data", expires_after=1)
    assert await sizes.total(scope) == 1000
    await asyncio.sleep(2.1)  # expires_at is in whole seconds
    assert await sizes.total(scope) == 300 == await _live_bytes(files, scope)
    await sizes.forget(scope)
    assert await redis.exists(*FILE_KEYS(scope)) == 0
