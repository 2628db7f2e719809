"""A steady load for a long time, and whether anything grows: the RSS of the api, the worker,
nats-server and Valkey, sampled every `--every` seconds.

One api and one echo worker (bench tenant with every limit set, so each request runs the
quota scripts), `--rate` requests a second started on a fixed clock (open loop: a slow
answer does not slow the load), a `--stream-share` of them streamed, the rest whole. After
`--warmup` minutes the growth of each process is the last sample minus the first sample
after the warm-up; the issue's bound is < 5 MB over the last 20 minutes of a 30-minute run.

    PYTHONPATH=$PWD .venv/bin/python bench/soak.py --minutes 30 --rate 15
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import llmq_stack, load_average, process_tree, rss_kib  # noqa: E402

PARTS = ("api", "worker", "nats", "valkey")


class Load:
    """Requests started on a clock; counts what came back."""

    def __init__(self, client: httpx.AsyncClient, url: str, stream_share: float) -> None:
        self.client = client
        self.url = url
        self.stream_share = stream_share
        self.ok = 0
        self.failed: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def one(self) -> None:
        stream = random.random() < self.stream_share
        body = {
            "model": "bench",
            "stream": stream,
            "messages": [{"role": "user", "content": "a steady little request " * 4}],
        }
        try:
            if stream:
                async with self.client.stream("POST", self.url, json=body) as resp:
                    text = b"".join([part async for part in resp.aiter_bytes()])
                    good = resp.status_code == 200 and text.endswith(b"data: [DONE]\n\n")
                    why = f"{resp.status_code} {text[-120:]!r}"
            else:
                resp = await self.client.post(self.url, json=body)
                good, why = resp.status_code == 200, f"{resp.status_code} {resp.text[:120]}"
        except httpx.HTTPError as exc:
            good, why = False, type(exc).__name__
        if good:
            self.ok += 1
        else:
            self.failed[why] = self.failed.get(why, 0) + 1

    async def run(self, rate: float, until: float) -> None:
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) < until:
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(self.one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        await asyncio.gather(*self._tasks)


def sample(roots: dict[str, int]) -> dict[str, float]:
    return {part: rss_kib(process_tree(roots[part])) / 1024 for part in PARTS}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="minutes not judged")
    parser.add_argument("--rate", type=float, default=15.0, help="requests per second")
    parser.add_argument("--stream-share", type=float, default=0.3)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args()
    async with llmq_stack(tenant=True) as stack:
        roots = {**stack.roots()}
        headers = {"authorization": f"Bearer {stack.key}"}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
            load = Load(client, stack.url(), args.stream_share)
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            runner = asyncio.create_task(load.run(args.rate, end))
            rows: list[tuple[float, dict[str, float], int]] = []
            print(f"# bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g} "
                  f"--stream-share {args.stream_share:g}; "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
            print("| minute | api MB | worker MB | nats-server MB | valkey MB | requests ok "
                  "| failed | load |\n|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
            while True:
                minute = (time.monotonic() - t0) / 60
                rss = sample(roots)
                rows.append((minute, rss, load.ok))
                print(
                    f"| {minute:.1f} | {rss['api']:.1f} | {rss['worker']:.1f} | "
                    f"{rss['nats']:.1f} | {rss['valkey']:.1f} | {load.ok} | "
                    f"{sum(load.failed.values())} | {load_average()} |",
                    flush=True,
                )
                if runner.done():
                    break
                await asyncio.sleep(min(args.every, max(0.0, end - time.monotonic()) + 1))
            await runner
    judged = [r for r in rows if r[0] >= args.warmup - 0.01]
    if len(judged) >= 2:
        first, last = judged[0], judged[-1]
        growth = ", ".join(f"{p} {last[1][p] - first[1][p]:+.1f} MB" for p in PARTS)
        per = (last[1]["api"] - first[1]["api"]) * 1024 * 1024 / max(1, last[2] - first[2])
        print(f"growth from minute {first[0]:.0f} to {last[0]:.0f}: {growth} "
              f"(api {per:+.0f} bytes per request)")  # fmt: skip
    print(f"requests ok {load.ok}, failed {load.failed}")


if __name__ == "__main__":
    asyncio.run(main())
