"""Latency of the quota path: reserve + release, sequential, against a local Valkey.

Starts its own server (api.embedded.EmbeddedRedis) on a free port, so nothing else is
needed. Budget: reserve (the per-request check) <= 0.3 ms p50, one script call.
`--key`: the request comes with an API key that has every limit of its own too (the
script checks and reserves both scopes) and an end user (booked per user at release).

    .venv/bin/python bench/quota.py [--n 2000] [--key]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from llmq.api.tenancy import KeySettings, Price, Quota, Tenant, TenantStore, connect
from llmq.embedded import EmbeddedRedis


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{name:<16} p50 {statistics.median(ms):6.3f} ms   p99 {_pct(ms, 0.99):6.3f} ms   "
        f"max {max(ms):6.3f} ms"
    )


async def run(url: str, n: int, warmup: int, with_key: bool) -> None:
    redis = connect(url)
    store = TenantStore(redis)
    quota = Quota(redis)
    # Every limit set, so the script takes its longest path.
    await store.create(
        Tenant(
            name="bench", models=["bench-model"], rpm=10**9, tpm=10**12, max_concurrent=10,
            daily_tokens=10**12, monthly_tokens=10**12, spend_budget_usd=10**9,
        )
    )  # fmt: skip
    await store.set_price("bench-model", Price(input_per_1m=0.5, output_per_1m=1.5))
    key_id, user = "", ""
    if with_key:
        _, key = await store.create_key(
            "bench",
            settings=KeySettings(
                models=["bench-model"], rpm=10**9, tpm=10**12, max_concurrent=10,
                daily_tokens=10**12, monthly_tokens=10**12, spend_budget_usd=10**9,
            ),
        )  # fmt: skip
        key_id, user = key.id, "end-user-1"

    ping: list[float] = []
    for _ in range(warmup + n):
        t0 = time.perf_counter()
        await redis.ping()
        ping.append(time.perf_counter() - t0)
    ping = ping[warmup:]

    await redis.config_resetstat()
    reserve: list[float] = []
    release: list[float] = []
    both: list[float] = []
    for i in range(warmup + n):
        job = f"job-{i}"
        t0 = time.perf_counter()
        decision = await quota.reserve(
            "bench", "bench-model", 200, 300, job, key_id=key_id, user=user
        )
        t1 = time.perf_counter()
        await quota.release("bench", "bench-model", job, 200, 120)
        t2 = time.perf_counter()
        assert decision.allowed, decision
        if i >= warmup:
            reserve.append(t1 - t0)
            release.append(t2 - t1)
            both.append(t2 - t0)
    server = (await redis.info("commandstats"))["cmdstat_evalsha"]
    await redis.aclose()

    scope = "tenant + key limits, end user" if with_key else "tenant limits"
    calls = server["calls"] / (warmup + n)
    print(f"{n} sequential reserve+release calls (after {warmup} warm-up), one client, {scope}")
    print(f"script calls per reserve+release: {calls:.2f} (the first two load the scripts)")
    print(_line("ping (floor)", ping))
    print(_line("reserve", reserve))
    print(_line("release", release))
    print(_line("reserve+release", both))
    print(
        f"server time per script call (reserve and release averaged): {server['usec_per_call']} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--key", action="store_true", help="an API key with limits too")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            asyncio.run(run(server.url, opts.n, opts.warmup, opts.key))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
