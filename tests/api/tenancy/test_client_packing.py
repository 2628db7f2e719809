"""The Redis client packs its commands with hiredis (api/tenancy/client.py `HiredisPacking`):
byte for byte what redis-py's own packer sends, in every mode the builder serves, and
writes them without a task per command — against redis-py's packer and a real Valkey."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from llmq.api.tenancy import Quota, Tenant, TenantStore, connect
from llmq.api.tenancy.client import HiredisPacking, packing
from llmq.embedded import EmbeddedRedis


class _Level(enum.IntEnum):
    LOW = 1


_ARGUMENTS: list[tuple[Any, ...]] = [
    # The quota script's call: sha, key count, keys, then str and int arguments.
    (
        "EVALSHA",
        "a" * 40,
        3,
        "llmq:t:{acme}",
        "llmq:t:{acme}:inflight",
        "x",
        "model-1",
        200,
        300,
        "job-1",
        1_764_330_000_123,
        900_000,
        "",
        0,
        -1,
        "end-user",
    ),
    ("SET", b"binary\x00\xff\r\n", b""),
    ("SET", "k", "é ü 漢字 🙂"),
    ("HSET", "h", "n", 10**30, "m", -(2**63), "z", 0),
    ("HSET", "h", "f", 1.5, "g", 0.1, "i", 1 / 3, "j", 1e300, "k", 1e-7, "l", -0.0),
    ("HSET", "h", "inf", float("inf"), "ninf", float("-inf"), "nan", float("nan")),
    ("SET", "k", "v" * 10_000),  # above redis-py's buffer cutoff: chunked there, one here
    ("SET", "k", memoryview(b"a view")),
    ("SET", "k", bytearray(b"an array")),  # hiredis refuses: redis-py packs it
    ("SET", "k", _Level.LOW),  # an int subclass: redis-py's repr, as ever
    ("CONFIG GET", "maxmemory"),  # a name with a space: split by redis-py
    (b"PING",),
]


@pytest.mark.parametrize("args", _ARGUMENTS, ids=range(len(_ARGUMENTS)))
def test_packs_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    ours = packing(Connection)()
    assert isinstance(ours, HiredisPacking) and ours._hiredis_pack is not None
    assert b"".join(ours.pack_command(*args)) == b"".join(Connection().pack_command(*args))


def test_common_commands_are_one_hiredis_buffer() -> None:
    packed = packing(Connection)().pack_command(*_ARGUMENTS[0])
    assert len(packed) == 1 and isinstance(packed[0], bytes)


@pytest.mark.parametrize("bad", [True, None, object()])
def test_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        packing(Connection)().pack_command("SET", "k", bad)


def test_another_encoding_packs_with_redis_py() -> None:
    latin = packing(Connection)(encoding="latin-1")
    assert latin._hiredis_pack is None
    assert latin.pack_command("SET", "k", "é") == Connection(encoding="latin-1").pack_command(
        "SET", "k", "é"
    )


def test_every_mode_gets_the_packing_connection() -> None:
    plain = connect("redis://127.0.0.1:1/0")
    assert plain.connection_pool.connection_class is packing(Connection)
    tls = connect("rediss://127.0.0.1:1/0")
    assert issubclass(tls.connection_pool.connection_class, SSLConnection)
    assert issubclass(tls.connection_pool.connection_class, HiredisPacking)
    sentinel = connect("redis+sentinel://127.0.0.1:1/mymaster")
    managed = sentinel.connection_pool.connection_class
    assert issubclass(managed, SentinelManagedConnection) and issubclass(managed, HiredisPacking)
    cluster: Any = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert cluster.connection_kwargs["connection_class"] is packing(Connection)
    assert all(n.connection_class is packing(Connection) for n in cluster.startup_nodes)
    assert packing(packing(Connection)) is packing(Connection)


async def test_round_trips_on_a_real_server(redis_server: EmbeddedRedis) -> None:
    redis: Redis = connect(redis_server.url, timeout=10.0)
    try:
        big = "x" * (8 << 20)  # more than a socket buffer: the write waits for a drain
        await redis.set("packing:big", big)
        assert await redis.get("packing:big") == big
        await redis.hset("packing:h", mapping={"i": 7, "f": 0.25, "s": "é"})
        assert await redis.hgetall("packing:h") == {"i": "7", "f": "0.25", "s": "é"}
        pipe = redis.pipeline(transaction=False)
        pipe.incrby("packing:n", 2).incrby("packing:n", 3)
        assert await pipe.execute() == [2, 5]
        await redis.delete("packing:big", "packing:h", "packing:n")

        store, quota = TenantStore(redis), Quota(redis)
        await store.create(Tenant(name="packing", rpm=5))
        decision = await quota.reserve("packing", "m", 10, 20, "job-1")
        assert decision.allowed and decision.reservation is not None
        assert decision.remaining_requests == 4
        assert await quota.release("packing", "m", "job-1", 10, 5)
        await store.delete("packing")
    finally:
        await redis.aclose()


async def test_a_small_pool_serves_a_crowd_without_losing_a_waiter(
    redis_server: EmbeddedRedis,
) -> None:
    """The pool's quick checkout below its cap and redis-py's blocking one at the cap take
    turns: 200 concurrent commands through 4 connections all complete, none extra made."""
    redis: Redis = connect(redis_server.url, timeout=10.0, max_connections=4)
    try:
        await redis.delete("packing:crowd")
        results = await asyncio.gather(*(redis.incr("packing:crowd") for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        pool: Any = redis.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 4
        for _ in range(50):  # below the cap, one connection serves commands in turn
            await redis.incr("packing:crowd")
        assert await redis.get("packing:crowd") == "250"
        await redis.delete("packing:crowd")
    finally:
        await redis.aclose()


async def test_a_flushed_script_cache_loads_the_script_again(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    """`Quota` sends `EVALSHA` itself; a server that forgot the script (`NOSCRIPT`) gets it
    loaded and the call made again, for the reserve and the release alike."""
    await store.create(Tenant(name=tenant_name, rpm=5))
    await redis.script_flush()
    decision = await quota.reserve(tenant_name, "m", 10, 20, "job-1")
    assert decision.allowed and decision.remaining_requests == 4
    await redis.script_flush()
    assert await quota.release(tenant_name, "m", "job-1", 10, 5)
    assert await quota.inflight(tenant_name) == 0
