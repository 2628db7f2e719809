"""CPU per request of the quota path under concurrency: each release in its own round trip
(a task per release, the simple way) against `Reservations.release_later`, which puts
the releases that end while one round trip is under way into the next one (a pipeline).

`--concurrency` clients each reserve, then release, in a loop, through one `Reservations`
on one redis-py client, against a local Valkey (api.embedded.EmbeddedRedis). CPU is this
process's (`time.process_time`: the api's side) and the server's (/proc), per request; the
two ways alternate in rounds, back to back, and each reports its median round.

`--clients`: the same folded path on redis-py's public path instead of llmq's client
(redis-py's own connection: Python packing and a `wait_for` task per command; its
blocking pool; `EVALSHA` through redis-py's `Script`), with only the api's connection
class (`api.tenancy.client.HiredisPacking`), and as the api builds it now (`connect`).

    PYTHONPATH=$PWD .venv/bin/python bench/release.py [--requests 4000] [--rounds 5] [--clients]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import BlockingConnectionPool, Redis  # noqa: E402
from redis.asyncio.connection import Connection  # noqa: E402
from redis.commands.core import AsyncScript  # noqa: E402

from bench.processes import cpu_seconds, load_average, priced_bench_tenant  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq.api.reservations import Reservations  # noqa: E402
from llmq.api.tenancy import Quota, TenantStore, connect  # noqa: E402
from llmq.api.tenancy.client import packing  # noqa: E402
from llmq.api.tenancy.errors import backend_guard  # noqa: E402
from llmq.embedded import EmbeddedRedis  # noqa: E402
from llmq.schemas.admission import JobUsage, Reservation  # noqa: E402

USAGE = JobUsage(prompt_tokens=200, completion_tokens=120)


class OneByOne(Reservations):
    """The simple release path: one task and one round trip per release."""

    def release_later(self, reservation: Reservation, usage: JobUsage) -> None:
        if reservation.held:
            self._spawn(self.release(reservation, usage))


class ScriptCall(Quota):
    """`Quota` calling its scripts through redis-py's `Script` (the public path),
    without the pipes (`api.tenancy.pipeline`, `bench/quota_pipeline.py` measures those)."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.pipe = self.release_pipe = None

    async def _call(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        with backend_guard():
            return await script(keys=keys, args=args)


def _stock(url: str, connection_class: type[Connection] = Connection) -> Redis:
    """The api's client as `connect` built it before, with `connection_class`."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=200, timeout=1.0, socket_timeout=1.0,
        socket_connect_timeout=1.0, decode_responses=True, connection_class=connection_class,
    )  # fmt: skip
    return Redis(connection_pool=pool)


async def _round(reservations: Reservations, tag: str, requests: int, conc: int) -> int:
    per_client = requests // conc

    async def client(c: int) -> None:
        for i in range(per_client):
            held = await reservations.reserve(
                "bench", "bench-model", 200, 300, f"{tag}-{c}-{i}", key_id=""
            )
            assert isinstance(held, Reservation), held
            reservations.release_later(held, USAGE)
            await asyncio.sleep(0)  # the response is written here in the api

    await asyncio.gather(*(client(c) for c in range(conc)))
    await reservations.drain()
    return per_client * conc


async def run(
    server: EmbeddedRedis, requests: int, rounds: int, conc: int, clients: bool = False
) -> None:
    redis = connect(server.url)
    store = TenantStore(redis)
    await priced_bench_tenant(store)
    quota = Quota(redis)
    ways = {"one by one": OneByOne(quota, False), "folded": Reservations(quota, False)}
    others: list[Redis] = []
    if clients:
        others = [_stock(server.url), _stock(server.url, packing(Connection))]
        ways = {
            "folded, redis-py client (before)": Reservations(ScriptCall(others[0]), False),
            "folded, + hiredis connection": Reservations(ScriptCall(others[1]), False),
            "folded, + quick pool, EVALSHA (after)": Reservations(quota, False),
        }
    for name, way in ways.items():  # warm: scripts loaded, connections open
        await _round(way, f"warm-{name}", conc * 20, conc)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for r in range(rounds):
        for name, way in ways.items():
            before_rounds = way.release_rounds
            own, valkey = time.process_time(), cpu_seconds([server.proc.pid])
            n = await _round(way, f"{r}-{name}", requests, conc)
            own = (time.process_time() - own) / n * 1e6
            valkey = (cpu_seconds([server.proc.pid]) - valkey) / n * 1e6
            trips = (way.release_rounds - before_rounds) / n if "folded" in name else 1.0
            samples[name].append((own, valkey, trips))
    await redis.aclose()
    for other in others:
        await other.aclose()
    print(
        f"{requests} reserve+release per round, {rounds} rounds, concurrency {conc}, "
        f"load {load_average()}"
    )
    print("| release | api-side CPU µs/req | Valkey CPU µs/req | release round trips per req |")
    print("|---|---|---|---|")
    for name, rows in samples.items():
        own, valkey, trips = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"| {name} | {own:,.0f} | {valkey:,.0f} | {trips:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", action="store_true", help="compare connection classes")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            event_loop.run(run(server, opts.requests, opts.rounds, opts.concurrency, opts.clients))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
