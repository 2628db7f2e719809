"""Latency of a non-streamed Responses API request next to the same chat request.

Starts its own nats-server and Redis-compatible server (free ports), an api and one echo
worker as separate processes, then sends the same prompt as `POST /v1/chat/completions`
and as `POST /v1/responses` (stored, the default, and `store: false`) at concurrency 1 and
32, and prints p50/p99 latency and requests/s for each and what Responses adds to chat.
The three are measured in alternating rounds (`--rounds`), so that load from elsewhere on
a shared machine falls on all of them alike.

    .venv/bin/python bench/responses.py --requests 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import RawClient, closed_loop  # noqa: E402
from bench.processes import llmq_stack  # noqa: E402
from llmq import event_loop  # noqa: E402

TEXT = "hello from the bench"
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": "bench", "messages": [{"role": "user", "content": TEXT}]},
    ),
    "responses": ("/v1/responses", {"model": "bench", "input": TEXT}),
    "resp-nostore": ("/v1/responses", {"model": "bench", "input": TEXT, "store": False}),
}


class BodyClient(RawClient):
    """RawClient with a body of our choosing."""

    def __init__(self, port: int, path: str, body: dict[str, Any]) -> None:
        super().__init__("127.0.0.1", port, path)
        payload = json.dumps(body).encode()
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload


async def measure(client: BodyClient, concurrency: int, total: int) -> tuple[list[float], float]:
    """Latencies of `total` requests at `concurrency`, and the seconds they took."""
    return await closed_loop(client, concurrency, total, warmup=50)


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": len(latencies) / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    async with llmq_stack(capacity=args.capacity) as stack:
        api_port = stack.api_port
        print(f"requests={args.requests} cores={os.cpu_count()}")
        print(f"{'path':<14}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
        for concurrency in (1, 32):
            seen: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in CASES}
            for _ in range(args.rounds):
                for name, (path, body) in CASES.items():
                    client = BodyClient(api_port, path, body)
                    got, took = await measure(client, concurrency, args.requests // args.rounds)
                    seen[name] = (seen[name][0] + got, seen[name][1] + took)
            results = {name: summary(*value) for name, value in seen.items()}
            for name, r in results.items():
                print(
                    f"{name:<14}{concurrency:>5}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                    f"{r['rps']:>9.0f}"
                )
            for name in ("responses", "resp-nostore"):
                added = results[name]["p50_ms"] - results["chat"]["p50_ms"]
                added99 = results[name]["p99_ms"] - results["chat"]["p99_ms"]
                print(f"{'+' + name:<14}{concurrency:>5}{added:>9.2f}{added99:>9.2f}")


if __name__ == "__main__":
    event_loop.run(main())
