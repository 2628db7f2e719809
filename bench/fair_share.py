"""What the fair share shared across api replicas costs a request: `FairShare.enter` (one
Lua call, `api/fair_share.lua`) and `Ticket.leave` (one more, off the request's path), with
the Redis ledger against the in-process one it replaced, and the fast path of an idle model
(`idle`: the Redis ledger, but the live view shows free slots, so a local ticket and no
Redis call; `idle+reg`: the same through the api's own view, `live_room` over a registry of
8 workers), back to back in one run. Reports wall time per enter (p50, p99), this
process's CPU time per enter+leave, the script calls per request of each row, and the
server's time per script call. Starts its own Redis-compatible server on a free port.

    PYTHONPATH=$PWD .venv/bin/python bench/fair_share.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from nats.js import JetStreamContext
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmq.api.fair_ledger import LocalLedger, RedisLedger, ShareLedger
from llmq.api.fair_share import FairShare, Room, live_room
from llmq.api.tenancy import connect
from llmq.dispatcher.registry import WorkerRegistry
from llmq.embedded import EmbeddedRedis
from llmq.schemas.registry import WorkerInfo


def _idle(model: str) -> tuple[int, float]:
    """A model with 10 free slots, heartbeats fresh."""
    return 10, time.time()


def _live_view() -> Room:
    """The api's own view (`live_room`): a registry holding two workers' heartbeats of the
    model (5 slots each) among 8 workers, and a queue estimate with no wait."""
    registry = WorkerRegistry(cast(JetStreamContext, None), ttl=60.0)
    for i in range(8):
        model = "bench-model" if i < 2 else f"other-{i}"
        registry._workers[f"w{i}"] = WorkerInfo(
            id=f"w{i}", backend="echo", models=[model], capacity=5, heartbeat_at=time.time()
        )
    return live_room(registry, lambda model: 0.0)


async def _round(
    ledger: ShareLedger, n: int, tenants: int, room_for: Room | None = None
) -> tuple[list[float], float]:
    """n requests, each entering and leaving at once (taken, then ended); tenants take
    turns (one model)."""
    gate = FairShare(lambda model: 10, ledger, room_for=room_for)
    enters: list[float] = []
    cpu = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        ticket = await gate.enter("bench-model", f"t{i % tenants}", 5.0)
        enters.append(time.perf_counter() - t0)
        assert ticket is not None
        ticket.leave()  # the worker took the job
        ticket.leave()  # it ended
        await asyncio.sleep(0)  # let the give-back run, as a request's later awaits do
    await asyncio.gather(*gate._tasks)  # the last give-backs
    return enters, (time.process_time() - cpu) / n


async def _calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


def _ms(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


async def run(url: str, n: int, rounds: int) -> None:
    redis = connect(url)
    await redis.config_resetstat()
    print(f"{n} requests per round, {rounds} rounds alternating, 4 tenants, one model")
    print(
        f"{'ledger':8} {'enter p50 ms':>13} {'enter p99 ms':>13} {'client CPU µs/req':>18}"
        f" {'script calls/req':>17}"
    )
    for _ in range(rounds):
        rows: list[tuple[str, ShareLedger, Room | None]] = [
            ("local", LocalLedger(), None),
            ("redis", RedisLedger(redis), None),
            ("idle", RedisLedger(redis), _idle),
            ("idle+reg", RedisLedger(redis), _live_view()),
        ]
        for name, ledger, room_for in rows:
            calls = await _calls(redis)
            enters, cpu = await _round(ledger, n, 4, room_for)
            per_request = (await _calls(redis) - calls) / n
            print(
                f"{name:8} {_ms(enters, 0.5):13.3f} {_ms(enters, 0.99):13.3f} {cpu * 1e6:18.1f}"
                f" {per_request:17.2f}"
            )
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
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
