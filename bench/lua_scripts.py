"""Valkey's work per request in the quota scripts: one version of `quota.lua` + `release.lua`
against another, alternating in rounds on one server, back to back.

A tenant with every limit set, a price, and an API key with every limit of its own plus an
end user (the scripts' longest path, as `bench/quota.py --key`; `--plain-key`: a key
without limits of its own, as `bench/compare.py` makes it). `--concurrency` clients
each reserve, then release, in a loop, through `Quota` on one client. Per version and
round: the server's CPU per reserve+release (/proc), and from `INFO commandstats` the
server time of the script calls (`evalsha` µs per call, reserve and release split by
reading the stats after each wave of reserves and each wave of releases) and the commands
the scripts ran per request. `--before REV`: the scripts of that git revision (default
`main`); the other side is the working tree's.

    PYTHONPATH=$PWD .venv/bin/python bench/lua_scripts.py [--requests 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from bench.processes import cpu_seconds, load_average  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq.api.tenancy import KeySettings, Price, Quota, Tenant, TenantStore, connect  # noqa: E402
from llmq.embedded import EmbeddedRedis  # noqa: E402

SCRIPTS = ("quota.lua", "release.lua", "renew.lua")
BIG = 10**12


def _scripts_at(rev: str) -> dict[str, str]:
    """The three scripts as they are at git revision `rev`."""
    return {
        name: subprocess.run(
            ["git", "show", f"{rev}:api/tenancy/{name}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
        for name in SCRIPTS
    }  # fmt: skip


def _quota(redis: Redis, texts: dict[str, str] | None) -> Quota:
    """A `Quota` running `texts` instead of the working tree's scripts (None: those)."""
    quota = Quota(redis)
    if texts is not None:
        quota._reserve = redis.register_script(texts["quota.lua"])
        quota._release = redis.register_script(texts["release.lua"])
        quota._renew = redis.register_script(texts["renew.lua"])
    return quota


async def _setup(redis: Redis, key_limits: bool = True) -> str:
    """The bench tenant, its price and a key with every limit (`key_limits`, else none, as
    `bench/compare.py` makes it); returns the key's id."""
    store = TenantStore(redis)
    await store.create(
        Tenant(
            name="bench", models=["bench-model"], rpm=BIG, tpm=BIG, max_concurrent=10**6,
            daily_tokens=BIG, monthly_tokens=BIG, spend_budget_usd=1e9,
        )
    )  # fmt: skip
    await store.set_price("bench-model", Price(input_per_1m=0.5, output_per_1m=1.5))
    settings = KeySettings(
        models=["bench-model"], rpm=BIG, tpm=BIG, max_concurrent=10**6,
        daily_tokens=BIG, monthly_tokens=BIG, spend_budget_usd=1e9,
    )  # fmt: skip
    _, key = await store.create_key("bench", settings=settings if key_limits else None)
    return key.id


async def _stats(redis: Redis) -> dict[str, tuple[int, int]]:
    """Command -> (calls, usec) since the last reset."""
    info: dict[str, Any] = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


def _minus(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Calls per command between two snapshots."""
    return {k: a[k][0] - b.get(k, (0, 0))[0] for k in a if a[k][0] - b.get(k, (0, 0))[0]}


async def _cpu_round(quota: Quota, key_id: str, tag: str, requests: int, conc: int) -> int:
    """`requests` reserve+release, `conc` clients each in a loop."""
    per_client = requests // conc

    async def client(c: int) -> None:
        for i in range(per_client):
            job = f"{tag}-{c}-{i}"
            d = await quota.reserve(
                "bench", "bench-model", 200, 300, job, key_id=key_id, user="end-user-1"
            )
            assert d.allowed, d
            assert await quota.release("bench", "bench-model", job, 200, 120)

    await asyncio.gather(*(client(c) for c in range(conc)))
    return per_client * conc


async def _split_round(
    redis: Redis, ways: dict[str, Quota], key_id: str, tag: str, requests: int, conc: int
) -> dict[str, tuple[float, float, dict[str, float], dict[str, float]]]:
    """Waves of `conc` reserves, then their releases, the ways taking turns wave by wave
    (so both see the same load on a shared machine), the stats read between waves: per
    way, evalsha µs per reserve and per release, and the commands each ran per request."""
    usec = {(name, p): 0 for name in ways for p in ("reserve", "release")}
    calls = dict(usec)
    ran: dict[tuple[str, str], dict[str, int]] = {k: {} for k in usec}
    snap = await _stats(redis)
    waves = requests // conc
    for w in range(waves):
        for name, quota in ways.items():
            jobs = [f"{tag}-{name}-{w}-{c}" for c in range(conc)]
            for phase in ("reserve", "release"):
                if phase == "reserve":
                    done = await asyncio.gather(*(
                        quota.reserve("bench", "bench-model", 200, 300, job, key_id=key_id,
                                      user="end-user-1")
                        for job in jobs
                    ))  # fmt: skip
                    assert all(d.allowed for d in done)
                else:
                    freed = await asyncio.gather(
                        *(quota.release("bench", "bench-model", job, 200, 120) for job in jobs)
                    )
                    assert all(freed)
                now = await _stats(redis)
                calls[name, phase] += now["evalsha"][0] - snap.get("evalsha", (0, 0))[0]
                usec[name, phase] += now["evalsha"][1] - snap.get("evalsha", (0, 0))[1]
                for k, v in _minus(now, snap).items():
                    if k not in ("evalsha", "info"):
                        ran[name, phase][k] = ran[name, phase].get(k, 0) + v
                snap = now
    n = waves * conc
    return {
        name: (
            usec[name, "reserve"] / calls[name, "reserve"],
            usec[name, "release"] / calls[name, "release"],
            {k: v / n for k, v in ran[name, "reserve"].items()},
            {k: v / n for k, v in ran[name, "release"].items()},
        )
        for name in ways
    }


async def run(server: EmbeddedRedis, opts: argparse.Namespace) -> None:
    redis = connect(server.url, max_connections=200)
    key_id = await _setup(redis, not opts.plain_key)
    ways = {f"before ({opts.before})": _quota(redis, _scripts_at(opts.before))}
    ways["after (working tree)"] = _quota(redis, None)
    for name, quota in ways.items():  # warm: scripts loaded, connections open
        await _cpu_round(quota, key_id, f"warm-{name}", opts.concurrency * 20, opts.concurrency)
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    split: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    ran: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    n = opts.requests
    for r in range(opts.rounds):
        for name, quota in ways.items():
            before = cpu_seconds([server.proc.pid])
            done = await _cpu_round(quota, key_id, f"{r}-{name}", n, opts.concurrency)
            cpu[name].append((cpu_seconds([server.proc.pid]) - before) / done * 1e6)
        for name, (res, rel, in_res, in_rel) in (
            await _split_round(redis, ways, key_id, f"s{r}", n // 2, opts.concurrency)
        ).items():
            split[name].append((res, rel))
            ran[name] = (in_res, in_rel)
    await redis.aclose()
    print(
        f"{n} reserve+release per round, {opts.rounds} rounds alternating, concurrency "
        f"{opts.concurrency}, tenant with every limit + key "
        f"{'without limits' if opts.plain_key else 'with every limit'}, price, end user; "
        f"load {load_average()}"
    )
    print("| scripts | Valkey CPU µs per reserve+release | evalsha µs per reserve | "
          "evalsha µs per release | commands per reserve | commands per release |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in ways:
        res, rel = (statistics.median(col) for col in zip(*split[name], strict=True))
        n_res, n_rel = (sum(d.values()) for d in ran[name])
        print(
            f"| {name} | {statistics.median(cpu[name]):,.1f} | {res:.1f} | {rel:.1f} | "
            f"{n_res:.2f} | {n_rel:.2f} |"
        )
    for name in ways:
        for phase, counts in zip(("reserve", "release"), ran[name], strict=True):
            listed = ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items()))
            print(f"{name}, per {phase}: {listed}")
    rounds = {k: [round(x) for x in v] for k, v in cpu.items()}
    print("rounds (CPU µs per reserve+release):", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--before", default="main", help="git revision of the old scripts")
    parser.add_argument(
        "--plain-key", action="store_true", help="a key without limits (as bench/compare.py)"
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            started = time.monotonic()
            event_loop.run(run(server, opts))
            print(f"took {time.monotonic() - started:.0f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
