"""Valkey's work per booking of a lease-admitted job (`lease_book.folded_script`): one git
revision's fold against the working tree's, alternating in rounds on one server.

The bench tenant of `bench/lua_scripts.py` (every limit, a price) and a key without limits
of its own (as `bench/compare.py`), jobs admitted from a lease (a ticket, no slot) booked
`--batch` at a time through `Quota.release_many`, as the api's release queue books them.
Per version: the server's CPU per booking (/proc, median of the rounds) and the commands
the script ran per booking (`INFO commandstats`).

    .venv/bin/python bench/lease_booking.py [--jobs 4000] [--rounds 5] [--before main]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from bench.lua_scripts import _minus, _setup, _stats  # noqa: E402
from bench.processes import cpu_seconds, load_average  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq.api.tenancy import Quota, connect  # noqa: E402
from llmq.api.tenancy.lease_book import folded_script  # noqa: E402
from llmq.api.tenancy.quota import Ending  # noqa: E402
from llmq.embedded import EmbeddedRedis  # noqa: E402


def _git(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def _fold_at(rev: str) -> str:
    """`folded_script()` as it was at `rev`."""
    module = _git(rev, "api/tenancy/lease_book.py")
    fold = re.search(r'_FOLD = """(.*?)"""', module, re.S)
    assert fold is not None
    book, release = (_git(rev, f"api/tenancy/{n}.lua") for n in ("lease_book", "release"))
    return fold.group(1) % (book, release)


async def _round(quota: Quota, key_id: str, jobs: int, batch: int, tag: str) -> None:
    at = int(time.time() * 1000)
    ticket = f"{at} 200 120 0 0 {key_id} - - ="
    for start in range(0, jobs, batch):
        endings = [
            Ending("bench", "bench-model", f"{tag}-{i}", 200, 100, lease=ticket)
            for i in range(start, min(jobs, start + batch))
        ]
        outcomes = await quota.release_many(endings)
        assert all(o is True for o in outcomes), outcomes[:3]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default="main")
    args = parser.parse_args()
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="llmq-lease-booking-")))
    redis: Redis = connect(server.url)
    try:
        key_id = await _setup(redis, key_limits=False)
        versions = {args.before: _fold_at(args.before), "tree": folded_script()}
        quotas = {}
        for name, text in versions.items():
            quotas[name] = Quota(redis)
            quotas[name]._book_release = redis.register_script(text)
            await _round(quotas[name], key_id, 64, args.batch, f"warm-{name}")
        cpu: dict[str, list[float]] = {name: [] for name in versions}
        calls: dict[str, dict[str, int]] = {}
        for r in range(args.rounds):
            for name, quota in quotas.items():
                before, stats = cpu_seconds([server.proc.pid]), await _stats(redis)
                await _round(quota, key_id, args.jobs, args.batch, f"{name}-{r}")
                cpu[name].append((cpu_seconds([server.proc.pid]) - before) * 1e6 / args.jobs)
                calls[name] = _minus(await _stats(redis), stats)
        print(f"load {load_average()}, {args.jobs} jobs x {args.rounds} rounds, batch {args.batch}")
        for name in versions:
            per = {k: v / args.jobs for k, v in calls[name].items() if k != "info"}
            inner = sum(v for k, v in per.items() if k != "evalsha")
            print(
                f"{name:>12}: Valkey CPU µs/booking median {statistics.median(cpu[name]):.1f} "
                f"(rounds {', '.join(f'{c:.1f}' for c in cpu[name])}); "
                f"commands/booking {inner:.1f}"
            )
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    event_loop.run(main())
