"""What each part of a cache miss costs the api, in process, against a Valkey this script
starts on a free port (docs/benchmarks.md, "What do a cache miss and a cache hit cost"):

- `key`:    decoding the job body, the request's choice and the key's SHA-256;
- `lookup`: the store's GET of an absent entry (one Valkey round trip, on the miss's path);
- `flight`: leading a flight (the job's events read through it) over reading them directly;
- `write`:  storing the answer (`put.lua`), one by one as a request ends, and queued
            (`api.cache.writes`: written together, off the request's path; 20 a write,
            as at c=1 with 1 ms requests).

CPU is this process's (user + system) per operation; wall is per operation too.

    .venv/bin/python bench/cache_parts.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmq import event_loop  # noqa: E402
from llmq.api.cache.flights import Flights, FollowedRun  # noqa: E402
from llmq.api.cache.policy import cache_key, choose, decode_body, is_sampled  # noqa: E402
from llmq.api.cache.store import CacheStore, Entry  # noqa: E402
from llmq.api.cache.writes import Writes  # noqa: E402
from llmq.api.tenancy import connect  # noqa: E402
from llmq.embedded import EmbeddedRedis  # noqa: E402
from llmq.schemas.frames import Done  # noqa: E402
from llmq.schemas.openai import Usage  # noqa: E402
from llmq.schemas.settings import CacheSettings  # noqa: E402


class _Run:
    """A job's events as a non-streaming answer brings them: one chunk, then `Done`."""

    async def events(self) -> AsyncGenerator[bytes | Done, None]:
        await asyncio.sleep(0)
        yield b'{"choices":[{"message":{"content":"hi"}}]}'
        await asyncio.sleep(0)
        yield Done(usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2))


def _report(name: str, n: int, cpu: float, wall: float) -> None:
    print(f"{name:<14}{cpu / n * 1e6:>10.1f}{wall / n * 1e6:>10.1f}")


async def _timed(name: str, n: int, step: object) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        await step(i)  # type: ignore[operator]
    _report(name, n, time.process_time() - cpu, time.perf_counter() - wall)


async def bench(n: int) -> None:
    server = EmbeddedRedis(Path(tempfile.mkdtemp()) / "valkey")
    redis = connect(server.url, decode_responses=False)
    try:
        store = CacheStore(redis, CacheSettings())
        writes = Writes(store, 16_000_000)
        bodies = [
            json.dumps({"model": "bench", "temperature": 0,
                        "messages": [{"role": "user", "content": f"q {i} " + "x" * 200}]}).encode()
            for i in range(n)
        ]  # fmt: skip
        cpu, wall = time.process_time(), time.perf_counter()
        digests = []
        for raw in bodies:
            body = decode_body(raw) or {}
            choose({}, 3600, 86_400, False, is_sampled("chat", body))
            digests.append(cache_key("scope", "bench", body))
        _report("key", n, time.process_time() - cpu, time.perf_counter() - wall)
        answer = b'{"choices":[{"message":{"content":"' + b"y" * 300 + b'"}}]}'
        entry = Entry(kind="chat", stream=False, created=time.time(), model="bench", body=answer)
        await store.put("warm", "warm", entry, 60)  # connected, the script loaded
        await _timed("lookup", n, lambda i: store.get("scope", digests[i]))
        run = _Run()

        async def direct(_i: int) -> None:
            async for _ev in run.events():
                pass

        flights = Flights()

        async def ended(_flight: object) -> None:
            return None

        async def led(i: int) -> None:
            flight = flights.claim((digests[i], False), (1_000_000, 1_000_000), ended)
            flight.start(run)  # type: ignore[arg-type]
            async for _ev in FollowedRun(flight).events():
                pass

        await _timed("flight: direct", n, lambda i: asyncio.create_task(direct(i)))
        await _timed("flight: led", n, lambda i: asyncio.create_task(led(i)))
        await _timed("write: each", n, lambda i: store.put("each", digests[i], entry, 3600))

        async def queued(i: int) -> None:  # 20 a write: c=1 at 1 ms a request
            writes.add("queued", digests[i], entry, 3600, "bench")
            if i % 20 == 19 or i == n - 1:
                writes._full.set_result(None)  # type: ignore[union-attr]  # no 20 ms wait
                await asyncio.wait(set(writes.tasks))

        await _timed("write: queued", n, queued)
    finally:
        await redis.aclose()
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    print(f"{'part':<14}{'cpu µs':>10}{'wall µs':>10}")
    await bench(args.n)


if __name__ == "__main__":
    event_loop.run(main())
