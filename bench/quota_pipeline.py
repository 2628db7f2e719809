"""CPU per request of the admission's Redis calls: redis-py's path per call (before) against
`api.tenancy.pipeline.ScriptPipe` (after: the reserves and the folded releases share one
write per batch on one connection).

`--concurrency` clients each reserve, then release (`Reservations.release_later`), in a loop,
through one `Reservations` on one client built by `connect`, against a local Valkey
(api.embedded.EmbeddedRedis); the same at concurrency 1. CPU is this process's
(`time.process_time`: the api's side) and the server's (/proc), per request; the two ways
alternate in rounds, back to back, and each reports its median round. "writes per req":
the pipes' writes (batches) per request, reserve and release together (redis-py's path:
one per reserve, one per release round). "µs wall/req" at concurrency 1 is the latency of
one reserve (+ its release off the path) on a loaded machine: a ratio, not a figure.

    PYTHONPATH=$PWD .venv/bin/python bench/quota_pipeline.py [--requests 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, load_average, priced_bench_tenant  # noqa: E402
from bench.release import _round  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq.api.reservations import Reservations  # noqa: E402
from llmq.api.tenancy import Quota, TenantStore, connect  # noqa: E402
from llmq.embedded import EmbeddedRedis  # noqa: E402


async def run(server: EmbeddedRedis, requests: int, rounds: int, concurrencies: list[int]) -> None:
    redis = connect(server.url)
    store = TenantStore(redis)
    await priced_bench_tenant(store)
    per_call = Quota(redis)
    per_call.pipe = per_call.release_pipe = None  # redis-py's path per call, as before
    piped = Quota(redis)
    ways = {
        "per call (before)": Reservations(per_call, False),
        "pipelined (after)": Reservations(piped, False),
    }
    print(f"{requests} reserve+release per round, {rounds} rounds, load {load_average()}")
    print("| conc | Redis path | api-side CPU µs/req | Valkey CPU µs/req | writes per req |"
          " µs wall/req |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for conc in concurrencies:
        n_req = requests if conc > 1 else requests // 2
        for name, way in ways.items():  # warm: scripts loaded, connections open
            await _round(way, f"warm-{conc}-{name}", conc * 20, conc)
        samples: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in ways}
        for r in range(rounds):
            for name, way in ways.items():
                pipes = [p for p in (way.quota.pipe, way.quota.release_pipe) if p]
                writes = sum(p.writes for p in pipes) if pipes else way.release_rounds
                own, valkey = time.process_time(), cpu_seconds([server.proc.pid])
                wall = time.perf_counter()
                n = await _round(way, f"{conc}-{r}-{name}", n_req, conc)
                wall = (time.perf_counter() - wall) / n * 1e6
                own = (time.process_time() - own) / n * 1e6
                valkey = (cpu_seconds([server.proc.pid]) - valkey) / n * 1e6
                if pipes:
                    trips = (sum(p.writes for p in pipes) - writes) / n
                else:  # one per reserve, plus the release rounds
                    trips = 1 + (way.release_rounds - writes) / n
                samples[name].append((own, valkey, trips, wall))
        for name, rows in samples.items():
            own, valkey, trips, wall = (statistics.median(c) for c in zip(*rows, strict=True))
            print(f"| {conc} | {name} | {own:,.0f} | {valkey:,.0f} | {trips:.2f} | {wall:,.0f} |")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 1])
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            event_loop.run(run(server, opts.requests, opts.rounds, opts.concurrency))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
