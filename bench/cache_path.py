"""What the response cache costs and saves, through real processes (docs/cache.md).

Starts nats-server, Valkey, an api with API keys and quotas and one echo worker (as
`bench/overhead.py` does), and switches its model table between leaving model `bench`
uncached and `cache = { ttl = "1h" }` on it, round after round, so both cases see the same
(shared) machine. At concurrency 1 it sends non-streaming chat requests (temperature 0),
and reports p50/p99 latency and the CPU of the api and the worker per request (/proc):

- `nocache`: distinct bodies, the model not cached (the baseline);
- `miss`:    distinct bodies, the model cached: each looks up, queues and stores;
- `hit`:     one body again and again, answered from the cache.

Budgets: a miss adds at most 0.2 ms p50 to `nocache`; a hit costs at least 3x less CPU
(api + worker) than a miss through the queue.

    .venv/bin/python bench/cache_path.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import RawClient  # noqa: E402
from bench.processes import cpu_seconds, llmq_stack, process_tree  # noqa: E402
from llmq import event_loop  # noqa: E402


class Bodies(RawClient):
    """`RawClient` whose request carries body `n` (distinct, or always the same)."""

    def __init__(self, port: int, key: str, distinct: bool, tag: str) -> None:
        super().__init__("127.0.0.1", port, "/v1/chat/completions", key)
        self.key, self.distinct, self.tag, self.n = key, distinct, tag, 0

    def next_request(self) -> None:
        self.n += 1
        text = f"{self.tag} question {self.n if self.distinct else 0} " + "x" * 200
        body = {"model": "bench", "temperature": 0,
                "messages": [{"role": "user", "content": text}]}  # fmt: skip
        payload = json.dumps(body).encode()
        self.request = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload


async def run(client: Bodies, total: int, warmup: int) -> list[float]:
    reader, writer = await client.connect()
    for _ in range(warmup):
        client.next_request()
        await client.call(reader, writer)
    latencies = []
    for _ in range(total):
        client.next_request()
        t0 = time.perf_counter()
        status = await client.call(reader, writer)
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"status {status}")
    writer.close()
    return latencies


def _measure(stack: Any, name: str, distinct: bool, total: int) -> Any:
    async def go() -> tuple[list[float], float, float]:
        api = process_tree(stack.procs["api"].pid)
        worker = process_tree(stack.procs["worker"].pid)
        client = Bodies(stack.api_port, stack.key, distinct, name)
        before = cpu_seconds(api), cpu_seconds(worker)
        latencies = await run(client, total, warmup=100)
        calls = total + 100
        return (
            latencies,
            (cpu_seconds(api) - before[0]) / calls * 1e6,
            (cpu_seconds(worker) - before[1]) / calls * 1e6,
        )

    return go()


async def bench(total: int, rounds: int) -> None:
    """Rounds of (no cache, miss) on one stack, the model table switched between them (the
    api re-reads it within a second), so both see the same machine; then the hits."""
    table = Path(tempfile.mkdtemp()) / "models.toml"
    plain, cached = '[models."bench"]\n', '[models."bench"]\ncache = { ttl = "1h" }\n'
    table.write_text(plain)
    results: dict[str, list[tuple[list[float], float, float]]] = {}
    async with llmq_stack(
        backend="echo", tenant=True, env={"LLMQ_MODELS_FILE": str(table)}
    ) as stack:
        for n in range(rounds):
            for name, text in (("nocache", plain), ("miss", cached)):
                table.write_text(text)
                await asyncio.sleep(2.5)  # the api's watch reads the file each second
                results.setdefault(name, []).append(
                    await _measure(stack, f"{name}{n}", True, total)
                )
        results["hit"] = [await _measure(stack, "hit", False, total)]
    for name, runs in results.items():
        latencies = sorted(x for r in runs for x in r[0])
        api_us = statistics.mean(r[1] for r in runs)
        worker_us = statistics.mean(r[2] for r in runs)
        print(
            f"{name:<8}{statistics.median(latencies) * 1000:>9.3f}"
            f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:>9.3f}"
            f"{api_us:>10.0f}{worker_us:>10.0f}{api_us + worker_us:>10.0f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="per round and case")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"requests={args.requests} rounds={args.rounds} concurrency=1 cores={os.cpu_count()}")
    print(f"{'case':<8}{'p50 ms':>9}{'p99 ms':>9}{'api µs':>10}{'wkr µs':>10}{'total µs':>10}")
    await bench(args.requests, args.rounds)


if __name__ == "__main__":
    event_loop.run(main())
