"""Latency of a non-streamed Anthropic Messages request next to the same chat request.

Starts its own nats-server and Redis-compatible server (free ports), an api and one worker
as separate processes (`--backend echo`, or `openai` in front of bench/mock_upstream.py),
then sends the same prompt as `POST /v1/chat/completions` and as `POST /v1/messages` at
concurrency 1 and 32, and prints p50/p99 latency and requests/s for each and what Messages
adds to chat, in per cent (the goal: within 10 %), with the CPU the api and the worker
processes spent per request (warm-up included), which a loaded machine disturbs less.
Both are measured in alternating rounds (`--rounds`), so that load from elsewhere on a
shared machine falls on both alike.

    .venv/bin/python bench/messages.py --requests 2000
    .venv/bin/python bench/messages.py --requests 2000 --backend openai

`--stream` measures streamed requests instead, one at a time on a kept-alive connection (as
bench/ttft.py does): the first SSE event and the end of the stream, for both routes, with the
api's and the worker's CPU per request.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, llmq_stack, process_tree  # noqa: E402
from bench.responses import BodyClient, measure, summary  # noqa: E402
from bench.ttft import StreamClient  # noqa: E402
from llmq import event_loop  # noqa: E402

TEXT = "hello from the bench"
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": TEXT}]},
    ),
    "messages": (
        "/v1/messages",
        {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": TEXT}]},
    ),
}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["echo", "openai"], default="echo")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--stream", action="store_true", help="streamed, at concurrency 1")
    args = parser.parse_args()

    mock = [sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
    async with llmq_stack(
        backend=args.backend, capacity=args.capacity,
        mock=(lambda port: [*mock, str(port)]) if args.backend == "openai" else None,
    ) as stack:  # fmt: skip
        print(f"backend={args.backend} requests={args.requests} cores={os.cpu_count()}")
        parts = {name: process_tree(stack.procs[name].pid) for name in ("api", "worker")}
        if args.stream:
            await streamed(stack.api_port, args.requests, args.rounds, parts)
            return
        print(
            f"{'path':<10}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'api µs/req':>12}"
            f"{'worker µs/req':>15}"
        )
        for concurrency in (1, 32):
            seen: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in CASES}
            cpu = {name: {"api": 0.0, "worker": 0.0} for name in CASES}
            for _ in range(args.rounds):
                for name, (path, body) in CASES.items():
                    client = BodyClient(stack.api_port, path, body)
                    before = {p: cpu_seconds(tree) for p, tree in parts.items()}
                    got, took = await measure(client, concurrency, args.requests // args.rounds)
                    for p, tree in parts.items():
                        cpu[name][p] += cpu_seconds(tree) - before[p]
                    seen[name] = (seen[name][0] + got, seen[name][1] + took)
            results = {name: summary(*value) for name, value in seen.items()}
            for name, r in results.items():
                calls = len(seen[name][0]) + args.rounds * (50 // concurrency + 1) * concurrency
                r["api_us"] = cpu[name]["api"] / calls * 1e6
                r["worker_us"] = cpu[name]["worker"] / calls * 1e6
                print(
                    f"{name:<10}{concurrency:>5}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                    f"{r['rps']:>9.0f}{r['api_us']:>12.0f}{r['worker_us']:>15.0f}"
                )
            chat, messages = results["chat"], results["messages"]
            p50 = (messages["p50_ms"] / chat["p50_ms"] - 1) * 100
            p99 = (messages["p99_ms"] / chat["p99_ms"] - 1) * 100
            rps = (messages["rps"] / chat["rps"] - 1) * 100
            api = (messages["api_us"] / chat["api_us"] - 1) * 100
            worker = (messages["worker_us"] / chat["worker_us"] - 1) * 100
            print(
                f"{'+messages':<10}{concurrency:>5}{p50:>+8.1f}%{p99:>+8.1f}%{rps:>+8.1f}%"
                f"{api:>+11.1f}%{worker:>+14.1f}%"
            )


async def streamed(port: int, requests: int, rounds: int, parts: dict[str, list[int]]) -> None:
    """First event and whole stream, p50/p99, and the api's and the worker's CPU per request
    (the measured calls only), for chat and Messages in alternating rounds."""
    clients = {
        name: StreamClient(f"http://127.0.0.1:{port}{path}", body={**body, "stream": True},
                           done=b"message_stop" if name == "messages" else b"[DONE]")
        for name, (path, body) in CASES.items()
    }  # fmt: skip
    firsts: dict[str, list[float]] = {name: [] for name in clients}
    ends: dict[str, list[float]] = {name: [] for name in clients}
    cpu = {name: {part: 0.0 for part in parts} for name in clients}
    for client in clients.values():
        for _ in range(50):
            await client.call()
    for _ in range(rounds):
        for name, client in clients.items():
            before = {part: cpu_seconds(tree) for part, tree in parts.items()}
            for _ in range(requests // rounds):
                first, end = await client.call()
                firsts[name].append(first)
                ends[name].append(end)
            for part, tree in parts.items():
                cpu[name][part] += cpu_seconds(tree) - before[part]
    for client in clients.values():
        client.close()
    print(f"{'path':<10}{'first p50':>10}{'p99':>10}{'end p50':>10}{'p99':>10}  (ms)"
          f"{'api µs/req':>12}{'worker µs/req':>15}")  # fmt: skip
    rows = {}
    for name in clients:
        f, e = sorted(firsts[name]), sorted(ends[name])
        rows[name] = [x * 1000 for x in (f[len(f) // 2], f[int(len(f) * 0.99) - 1],
                                         e[len(e) // 2], e[int(len(e) * 0.99) - 1])]  # fmt: skip
        rows[name] += [cpu[name][part] / len(f) * 1e6 for part in parts]
        print(f"{name:<10}" + "".join(f"{v:>10.2f}" for v in rows[name][:4]) + "      "
              + f"{rows[name][4]:>12.0f}{rows[name][5]:>15.0f}")  # fmt: skip
    added = [(m / c - 1) * 100 for m, c in zip(rows["messages"], rows["chat"], strict=True)]
    print(f"{'+messages':<10}" + "".join(f"{v:>+9.1f}%" for v in added[:4]) + "      "
          + f"{added[4]:>+11.1f}%{added[5]:>+14.1f}%")  # fmt: skip


if __name__ == "__main__":
    event_loop.run(main())
