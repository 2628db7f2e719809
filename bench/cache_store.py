"""Which shared store holds the response cache: a JetStream KV bucket or Valkey.

Sequential get and put of one entry (2 KB and 100 KB), as the api does them on a miss
(one get) and after an answer (one put), against servers this script starts on free ports.
Reports p50/p99 latency and the client process's CPU per operation (the api's cost; the
servers' own CPU is theirs). The KV bucket is made as llmq's cache bucket is (memory
storage, max_bytes, max_age); Valkey keys carry a TTL (SET ... PX).

    .venv/bin/python bench/cache_store.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from redis.asyncio import Redis

from llmq.embedded import EmbeddedNats, EmbeddedRedis

Op = Callable[[int], Awaitable[object]]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(name: str, op: Op, n: int) -> None:
    for i in range(min(200, n)):  # warm up
        await op(i)
    samples: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / n
    ms = [s * 1000 for s in samples]
    print(
        f"{name:<24} p50 {statistics.median(ms):6.3f} ms  p99 {_pct(ms, 0.99):6.3f} ms  "
        f"client CPU {cpu * 1e6:6.1f} us/op"
    )


def _ops(kv: KeyValue, redis: Redis, value: bytes) -> list[tuple[str, Op]]:
    async def kv_put(i: int) -> object:
        return await kv.put(f"t.k{i % 500}", value)

    async def kv_get(i: int) -> object:
        return await kv.get(f"t.k{i % 500}")

    async def valkey_put(i: int) -> object:
        return await redis.set(f"llmq:cache:{{t}}:k{i % 500}", value, px=3_600_000)

    async def valkey_get(i: int) -> object:
        return await redis.get(f"llmq:cache:{{t}}:k{i % 500}")

    return [("kv put", kv_put), ("kv get", kv_get), ("valkey put", valkey_put),
            ("valkey get", valkey_get)]  # fmt: skip


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nats_server = EmbeddedNats(Path(tmp) / "nats", max_payload=8 * 1024 * 1024)
        valkey = EmbeddedRedis(Path(tmp) / "valkey")
        try:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket="BENCH_CACHE", max_bytes=1 << 30, ttl=3600,
                    storage=StorageType.MEMORY, max_value_size=4 << 20,
                )
            )  # fmt: skip
            redis = Redis.from_url(valkey.url)  # bytes in, bytes out
            for size in (2_000, 100_000):
                label = f"{size // 1000} KB"
                for name, op in _ops(kv, redis, os.urandom(size)):
                    await _measure(f"{name} {label}", op, n)
            await redis.aclose()
            await nc.close()
        finally:
            nats_server.stop()
            valkey.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
