"""Time to first token that llmq adds to a streamed request, at concurrency 1.

Starts its own stack (`bench.processes.llmq_stack`: nats-server, Valkey, the mock upstream,
an api with API keys and the quota script on, one `openai`-backend worker in front of the
mock) and sends streamed chat requests one at a time over one kept-alive connection, to the
mock directly and through llmq, alternating in rounds. For each it records when the first
SSE event arrived (the role chunk: the first token a client can show) and when the stream
ended (`data: [DONE]` and the last chunk of the chunked body), and prints p50/p99 of both
and what llmq adds.

    PYTHONPATH=$PWD .venv/bin/python bench/ttft.py --requests 2000 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import llmq_stack  # noqa: E402
from llmq import event_loop  # noqa: E402

BODY = {
    "model": "bench",
    "stream": True,
    "messages": [{"role": "user", "content": "hello from the mock"}],
}
END = b"\r\n0\r\n\r\n"
"""The last chunk of a chunked HTTP/1.1 body."""


class StreamClient:
    """One kept-alive HTTP/1.1 connection sending the same streamed request again and again."""

    def __init__(
        self, url: str, key: str = "", body: dict[str, object] = BODY, done: bytes = b"[DONE]"
    ) -> None:
        """`done`: what the last SSE event holds (`message_stop` for Anthropic's)."""
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.done = done
        payload = json.dumps(body).encode()
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.request = (
            f"POST {parsed.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\n{auth}Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self) -> tuple[float, float]:
        """Seconds to the first SSE event and to the end of the body."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        start = time.perf_counter()
        writer.write(self.request)
        seen = b""
        first = 0.0
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                raise RuntimeError("connection closed mid-stream")
            seen += data
            if not first and b"data: " in seen:
                first = time.perf_counter() - start
                if not seen.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(seen[:200].decode(errors="replace"))
            if seen.endswith(END) and self.done in seen:
                return first, time.perf_counter() - start

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per target, all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    mock = [sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
    async with llmq_stack(
        backend="openai", tenant=True, mock=lambda port: [*mock, str(port)]
    ) as stack:
        clients = {
            "direct": StreamClient(f"http://127.0.0.1:{stack.mock_port}/v1/chat/completions"),
            "llmq": StreamClient(stack.url(), stack.key),
        }
        for client in clients.values():
            for _ in range(args.warmup):
                await client.call()
        firsts: dict[str, list[float]] = {name: [] for name in clients}
        ends: dict[str, list[float]] = {name: [] for name in clients}
        per_round = args.requests // args.rounds
        for _ in range(args.rounds):
            for name, client in clients.items():
                for _ in range(per_round):
                    first, end = await client.call()
                    firsts[name].append(first)
                    ends[name].append(end)
        for client in clients.values():
            client.close()

    print(f"streamed requests at concurrency 1: {per_round * args.rounds} per target")
    print("| target | first event p50 | p99 | whole stream p50 | p99 |")
    print("|---|---|---|---|---|")
    rows = {}
    for name in clients:
        rows[name] = (*_summary(firsts[name]), *_summary(ends[name]))
        f50, f99, e50, e99 = rows[name]
        print(f"| {name} | {f50:.2f} ms | {f99:.2f} ms | {e50:.2f} ms | {e99:.2f} ms |")
    added = [q - d for q, d in zip(rows["llmq"], rows["direct"], strict=True)]
    print(
        f"| llmq adds | {added[0]:.2f} ms | {added[1]:.2f} ms | {added[2]:.2f} ms | "
        f"{added[3]:.2f} ms |"
    )


if __name__ == "__main__":
    event_loop.run(main())
