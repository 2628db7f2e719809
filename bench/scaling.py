"""Throughput that grows with workers, and two apis that serve what one serves and survive
losing either.

The upstream takes 50 ms per request (the echo backend answering 4 words with a 12.5 ms
pause per word), and each worker runs `--capacity` requests at once, so a worker's ceiling
is capacity / 0.05 s: throughput is bound by capacity, not by the 2 cores, and must grow in
proportion to the workers. Starts its own nats-server and Redis-compatible server (free
ports), apis and workers as separate processes, then keeps `--concurrency` keep-alive
connections busy (more than the workers can take, so a queue always waits).

    .venv/bin/python bench/scaling.py                      # 1, 2, 4 workers; then 2 apis
    .venv/bin/python bench/scaling.py --seconds 5 --capacity 4

Phase 1: one api, 1/2/4 workers: req/s, p50/p99, ideal (workers x capacity / 50 ms).
Phase 2: two apis (connections split between them), 4 workers: req/s; then SIGKILL of each
api in turn (on a fresh pair) mid-run: requests that failed (those in flight on the killed
api, which a load balancer would retry), req/s after the loss.

`--capacity-figures` measures instead the inputs of docs/scaling.md's capacity model: jobs/s
that JetStream takes (publish + ack of 600-byte jobs with `Nats-Msg-Id` into a memory work
queue, as the api publishes them; one node R1, then a 3-node cluster R3) and chunks/s that
one api relays (one echo worker streaming long answers with no delay, 8 streams at once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import RawClient  # noqa: E402
from bench.processes import spawn, stop_all, wait_until_served  # noqa: E402
from llmq.embedded import EmbeddedNats, EmbeddedRedis, free_port  # noqa: E402

UPSTREAM_SECONDS = 0.05
WORDS = 4
"""`hello from the mock`: the echo backend answers these 4 words."""


class Load:
    """`concurrency` keep-alive connections spread over `urls`; a connection whose api died
    moves to the next url (as a load balancer would); counts successes and failures."""

    def __init__(self, urls: list[str], concurrency: int) -> None:
        self.clients = []
        for url in urls:
            parsed = urlsplit(url)
            self.clients.append(RawClient(parsed.hostname or "", parsed.port or 80, parsed.path))
        self.concurrency = concurrency
        self.latencies: list[tuple[float, float]] = []
        """(end time, latency) of every success."""
        self.failures: list[float] = []
        self.stop_at = 0.0

    async def _lane(self, index: int) -> None:
        which = index % len(self.clients)
        conn = None
        while time.monotonic() < self.stop_at:
            client = self.clients[which]
            try:
                if conn is None:
                    conn = await client.connect()
                t0 = time.monotonic()
                status = await client.call(*conn)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                self.latencies.append((time.monotonic(), time.monotonic() - t0))
            except (OSError, asyncio.IncompleteReadError, RuntimeError):
                self.failures.append(time.monotonic())
                if conn is not None:
                    conn[1].close()
                conn = None
                which = (which + 1) % len(self.clients)
                await asyncio.sleep(0.01)
        if conn is not None:
            conn[1].close()

    async def run(self, seconds: float) -> None:
        self.stop_at = time.monotonic() + seconds
        await asyncio.gather(*(self._lane(i) for i in range(self.concurrency)))

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, float]:
        picked = sorted(lat for end, lat in self.latencies if since <= end < until)
        ends = [end for end, _ in self.latencies if since <= end < until]
        span = (max(ends) - min(ends)) if len(ends) > 1 else 1.0
        return {
            "rps": len(picked) / span if span else 0.0,
            "p50_ms": statistics.median(picked) * 1000 if picked else 0.0,
            "p99_ms": picked[max(0, int(len(picked) * 0.99) - 1)] * 1000 if picked else 0.0,
        }


class Stack:
    def __init__(self, tmp: Path, capacity: int) -> None:
        self.tmp = tmp
        self.capacity = capacity
        self.nats = EmbeddedNats(tmp / "nats")
        self.redis = EmbeddedRedis(tmp / "redis")
        self.env = {
            "LLMQ_NATS_URL": self.nats.url,
            "LLMQ_REDIS_URL": self.redis.url,
            "LLMQ_LOG_LEVEL": "WARNING",
            "LLMQ_AUTH_MODE": "none",
            "LLMQ_ECHO_DELAY": str(UPSTREAM_SECONDS / WORDS),
        }
        self.apis: list[tuple[subprocess.Popen[bytes], str]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self._n += 1
        log = self.tmp / f"{args[0]}-{self._n}.log"
        return spawn([sys.executable, "-m", "llmq.cli", *args], self.env, log)

    async def api(self) -> str:
        port = free_port()
        proc = self._spawn(["api", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        self.apis.append((proc, url))
        await wait_until_served(f"{url}/health", "ok")
        return f"{url}/v1/chat/completions"

    async def workers_up_to(self, count: int) -> None:
        while len(self.workers) < count:
            worker_id = f"bench-{len(self.workers)}"
            args = ["worker", "--model", "bench", "--capacity", str(self.capacity)]
            self.workers.append(self._spawn([*args, "--worker-id", worker_id]))
        url = self.apis[0][1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with httpx.AsyncClient() as client:
                ready = (await client.get(f"{url}/ready")).json()
            if ready.get("workers") == count:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{count} workers did not register")

    def stop_apis(self) -> None:
        stop_all([proc for proc, _ in self.apis])
        self.apis.clear()

    def stop(self) -> None:
        stop_all([p for p, _ in self.apis] + self.workers, self.nats, self.redis)


async def jetstream_rate(url: str, replicas: int, jobs: int = 20_000) -> float:
    """Jobs/s published and acked by the stream, 256 publishes in flight."""
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(servers=url.split(","))
    js = nc.jetstream()
    config = StreamConfig(
        name="BENCH_JOBS", subjects=["bench.jobs.>"], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY, num_replicas=replicas, duplicate_window=120,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # a fresh cluster serves JetStream once it has a meta leader
        try:
            await js.add_stream(config)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    body = b"x" * 600
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> None:
        async with sem:
            await js.publish("bench.jobs.m", body, headers={"Nats-Msg-Id": f"job-{i}"})

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH_JOBS")
    await nc.close()
    return jobs / elapsed


async def chunk_rate(api: str, seconds: float, streams: int = 8, words: int = 2000) -> float:
    """Chunks/s one api relays as SSE from one echo worker (no delay)."""
    body = {
        "model": "bench", "stream": True,
        "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
    }  # fmt: skip
    chunks = 0
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:

        async def lane() -> None:
            nonlocal chunks
            while time.monotonic() < stop_at:
                async with client.stream("POST", api, json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: {"):
                            chunks += 1

        started = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(streams)))
        return chunks / (time.monotonic() - started)


async def capacity_figures(tmp: Path, seconds: float) -> None:
    from llmq.embedded import cluster_url, nats_cluster

    print(f"cores={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    single = EmbeddedNats(tmp / "single")
    try:
        print(f"jetstream, 1 node, R1: {await jetstream_rate(single.url, 1):8.0f} jobs/s")
    finally:
        single.stop()
    nodes = nats_cluster(tmp / "cluster", 3)
    try:
        rate = await jetstream_rate(cluster_url(nodes), 3)
        print(f"jetstream, 3 nodes, R3: {rate:8.0f} jobs/s")
    finally:
        for node in nodes:
            node.stop()
    stack = Stack(tmp / "chunks", capacity=16)
    stack.env["LLMQ_ECHO_DELAY"] = "0"
    try:
        api = await stack.api()
        await stack.workers_up_to(1)
        await chunk_rate(api, 1.0)
        print(f"one api relaying SSE:   {await chunk_rate(api, seconds):8.0f} chunks/s")
    finally:
        stack.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--capacity", type=int, default=4, help="jobs per worker at once")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--capacity-figures", action="store_true", help="see above")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llmq-scaling-"))
    if args.capacity_figures:
        await capacity_figures(tmp, args.seconds)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    stack = Stack(tmp, args.capacity)
    try:
        print(
            f"upstream {UPSTREAM_SECONDS * 1000:.0f} ms/request, capacity {args.capacity}/worker,"
            f" {args.concurrency} connections, {args.seconds:.0f} s each, cores={os.cpu_count()},"
            f" load average {os.getloadavg()[0]:.2f}"
        )
        api = await stack.api()
        print(f"{'apis':>4}{'workers':>8}{'req/s':>9}{'ideal':>8}{'p50 ms':>9}{'p99 ms':>9}")
        for workers in (1, 2, 4):
            await stack.workers_up_to(workers)
            load = Load([api], args.concurrency)
            await Load([api], args.concurrency).run(1.0)  # warm up
            await load.run(args.seconds)
            r = load.summary()
            ideal = workers * args.capacity / UPSTREAM_SECONDS
            print(
                f"{1:>4}{workers:>8}{r['rps']:>9.0f}{ideal:>8.0f}{r['p50_ms']:>9.1f}"
                f"{r['p99_ms']:>9.1f}  failed {len(load.failures)}"
            )
        stack.stop_apis()
        for victim in (0, 1):
            urls = [await stack.api(), await stack.api()]
            await Load(urls, args.concurrency).run(1.0)
            load = Load(urls, args.concurrency)
            running = asyncio.create_task(load.run(args.seconds))
            await asyncio.sleep(args.seconds / 2)
            killed_at = time.monotonic()
            stack.apis[victim][0].send_signal(signal.SIGKILL)
            await running
            before, after = load.summary(until=killed_at), load.summary(since=killed_at + 0.5)
            print(
                f"{2:>4}{4:>8}{before['rps']:>9.0f}{4 * args.capacity / UPSTREAM_SECONDS:>8.0f}"
                f"{before['p50_ms']:>9.1f}{before['p99_ms']:>9.1f}  api-{victim + 1} killed:"
                f" {len(load.failures)} failed, then {after['rps']:.0f} req/s"
                f" (p99 {after['p99_ms']:.1f} ms) on the other"
            )
            stack.stop_apis()
    finally:
        stack.stop()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
