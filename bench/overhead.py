"""Latency llmq adds to a request, compared with calling a fast mock upstream directly.

Starts its own nats-server and Redis-compatible server (free ports), the mock upstream, an
api and one worker as separate processes, then sends non-streaming chat requests at
concurrency 1 and 32 to (a) the mock directly and (b) llmq, and prints p50/p99 latency and
requests/s for each, plus the difference, and the worker process's CPU per request through
llmq (from /proc, warm-up included).

    .venv/bin/python bench/overhead.py                     # echo backend
    .venv/bin/python bench/overhead.py --backend openai    # openai backend -> mock upstream

The openai worker is pointed at the mock with `LLMQ_BACKEND_URL`; other `LLMQ_` variables
in the environment reach every process (e.g. `LLMQ_BACKEND_HTTP_CLIENT=httpx`). By default
the api runs with `LLMQ_AUTH_MODE=none`, measuring the dispatch path; `--tenant` runs it with
API keys and a tenant whose every limit is set, so each request also pays the key lookup
(cached) and the quota script:

    .venv/bin/python bench/overhead.py --tenant
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, llmq_stack, process_tree  # noqa: E402
from llmq import event_loop  # noqa: E402

BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello from the mock"}]}


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost less than what it
    measures (httpx's pool falls behind at concurrency 32 on 2 cores)."""

    def __init__(self, host: str, port: int, path: str, key: str = "") -> None:
        self.host, self.port = host, port
        payload = json.dumps(BODY).encode()
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return status


async def closed_loop(
    client: RawClient, concurrency: int, total: int, warmup: int
) -> tuple[list[float], float]:
    """Latencies of `total` requests over `concurrency` kept-alive connections, each sending
    its next request when the last one ended (after `warmup` calls), and the seconds taken."""
    conns = [await client.connect() for _ in range(concurrency)]
    for _ in range(warmup // concurrency + 1):
        await asyncio.gather(*[client.call(r, w) for r, w in conns])
    latencies: list[float] = []
    remaining = total

    async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            status = await client.call(reader, writer)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"status {status}")

    start = time.perf_counter()
    await asyncio.gather(*[loop(r, w) for r, w in conns])
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return latencies, elapsed


async def measure(
    url: str, concurrency: int, total: int, warmup: int = 200, key: str = ""
) -> dict[str, float]:
    parsed = urlsplit(url)
    client = RawClient(parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path, key)
    latencies, elapsed = await closed_loop(client, concurrency, total, warmup)
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": len(latencies) / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["echo", "openai"], default="echo")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--tenant", action="store_true", help="API keys and quotas on")
    args = parser.parse_args()

    mock = [sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
    async with llmq_stack(
        backend=args.backend, tenant=args.tenant, capacity=args.capacity,
        mock=lambda port: [*mock, str(port)],
    ) as stack:  # fmt: skip
        key = stack.key
        direct_url = f"http://127.0.0.1:{stack.mock_port}/v1/chat/completions"
        llmq_url = stack.url()
        print(
            f"backend={args.backend} tenant={args.tenant} requests={args.requests} "
            f"cores={os.cpu_count()}"
        )
        print(
            f"{'target':<8}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'worker µs/req':>15}"
            f"{'api µs/req':>12}"
        )
        worker = process_tree(stack.procs["worker"].pid)
        api = process_tree(stack.procs["api"].pid)
        for concurrency in (1, 32):
            direct = await measure(direct_url, concurrency, args.requests, key=key)
            cpu_before, api_before = cpu_seconds(worker), cpu_seconds(api)
            via = await measure(llmq_url, concurrency, args.requests, key=key)
            calls = args.requests + (200 // concurrency + 1) * concurrency  # with the warm-up
            worker_us = (cpu_seconds(worker) - cpu_before) / calls * 1e6
            api_us = (cpu_seconds(api) - api_before) / calls * 1e6
            for name, r in (("direct", direct), ("llmq", via)):
                cpu = f"{worker_us:>15.0f}{api_us:>12.0f}" if name == "llmq" else ""
                print(
                    f"{name:<8}{concurrency:>5}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                    f"{r['rps']:>9.0f}{cpu}"
                )
            added_p50 = via["p50_ms"] - direct["p50_ms"]
            added_p99 = via["p99_ms"] - direct["p99_ms"]
            print(f"{'added':<8}{concurrency:>5}{added_p50:>9.2f}{added_p99:>9.2f}")


if __name__ == "__main__":
    event_loop.run(main())
