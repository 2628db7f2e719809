"""What the fair share shared across api replicas costs a request: `FairShare.enter` (one
Lua call, `api/fair_share.lua`) and `Ticket.leave` (one more, off the request's path), with
the Redis ledger against the in-process one it replaced, back to back in one run. Reports
wall time per enter (p50, p99), this process's CPU time per enter+leave, and the server's
time per script call. Starts its own Redis-compatible server on a free port.

    PYTHONPATH=$PWD .venv/bin/python bench/fair_share.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmq.api.fair_ledger import LocalLedger, RedisLedger, ShareLedger
from llmq.api.fair_share import FairShare
from llmq.api.tenancy import connect
from llmq.embedded import EmbeddedRedis


async def _round(ledger: ShareLedger, n: int, tenants: int) -> tuple[list[float], float]:
    """n requests, each entering and leaving at once; tenants take turns (one model)."""
    gate = FairShare(lambda model: 10, ledger)
    enters: list[float] = []
    cpu = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        ticket = await gate.enter("bench-model", f"t{i % tenants}", 5.0)
        enters.append(time.perf_counter() - t0)
        assert ticket is not None
        ticket.leave()
        await asyncio.sleep(0)  # let the give-back run, as a request's later awaits do
    await asyncio.gather(*gate._tasks)  # the last give-backs
    return enters, (time.process_time() - cpu) / n


def _ms(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


async def run(url: str, n: int, rounds: int) -> None:
    redis = connect(url)
    await redis.config_resetstat()
    print(f"{n} requests per round, {rounds} rounds alternating, 4 tenants, one model")
    print(f"{'ledger':8} {'enter p50 ms':>13} {'enter p99 ms':>13} {'client CPU µs/req':>18}")
    for _ in range(rounds):
        for name, ledger in (("local", LocalLedger()), ("redis", RedisLedger(redis))):
            enters, cpu = await _round(ledger, n, 4)
            print(f"{name:8} {_ms(enters, 0.5):13.3f} {_ms(enters, 0.99):13.3f} {cpu * 1e6:18.1f}")
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    per_request = stats.get("calls", 0) / (n * rounds)
    print(f"script calls per request: {per_request:.2f} (enter + leave)")
    print(f"server time per script call: {stats.get('usec_per_call', 0)} µs")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            asyncio.run(run(server.url, opts.n, opts.rounds))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
