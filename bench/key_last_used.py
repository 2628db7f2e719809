"""What stamping a key's last use costs: `release.lua` as shipped (it HSETs the key's
last-used time) against the same script without that line, on one local Valkey, back to back.

The stamp adds no round trip (it rides in the release script, one EVALSHA either way) and
nothing to the request path (reserve is unchanged); this measures the Valkey CPU it adds to
each release, from INFO's used_cpu_user + used_cpu_sys around the releases only, in
alternating rounds so both variants see the same machine load.

    .venv/bin/python bench/key_last_used.py [--rounds 10] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from llmq.api.tenancy import KeySettings, Price, Quota, Tenant, TenantStore, connect
from llmq.api.tenancy.quota import _script
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names

STAMP = "  redis.call('HSET', KEYS[8], key_id, ARGV[5])\n"


async def _cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _round(redis: Any, quota: Quota, key_id: str, tag: str, jobs: int) -> float:
    """Valkey CPU seconds per release of `jobs` reserved jobs."""
    ids = [f"{tag}-{i}" for i in range(jobs)]
    for job in ids:
        decision = await quota.reserve("bench", "bench-model", 20, 20, job, key_id=key_id)
        assert decision.allowed, decision
    before = await _cpu(redis)
    for job in ids:
        assert await quota.release("bench", "bench-model", job, 20, 15)
    return (await _cpu(redis) - before) / jobs


async def run(url: str, rounds: int, jobs: int) -> None:
    redis = connect(url)
    store = TenantStore(redis)
    await store.create(Tenant(name="bench", models=["bench-model"]))
    await store.set_price("bench-model", Price(input_per_1m=0.5, output_per_1m=1.5))
    _, key = await store.create_key("bench", settings=KeySettings(rpm=10**9))
    shipped = Quota(redis)
    source = _script("release.lua")
    assert STAMP in source, "release.lua no longer stamps the key as this bench expects"
    without = Quota(redis)
    without._release = redis.register_script(source.replace(STAMP, ""))  # type: ignore[attr-defined]
    await _round(redis, shipped, key.id, "warm-a", jobs)
    await _round(redis, without, key.id, "warm-b", jobs)
    stamped: list[float] = []
    bare: list[float] = []
    for r in range(rounds):
        stamped.append(await _round(redis, shipped, key.id, f"a{r}", jobs))
        bare.append(await _round(redis, without, key.id, f"b{r}", jobs))
    a, b = statistics.median(stamped), statistics.median(bare)
    print(f"release with the last-used stamp    {a * 1e6:6.1f} us Valkey CPU (median of {rounds})")
    print(f"release without it                  {b * 1e6:6.1f} us Valkey CPU")
    print(f"ratio {a / b:.3f}   difference {(a - b) * 1e6:+.1f} us per release")
    print(f"stamps: {await redis.hgetall(names.key_last_used_key('bench'))}")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        try:
            asyncio.run(run(server.url, args.rounds, args.jobs))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
