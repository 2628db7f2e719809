"""Streams nobody reads: the api's memory while they are open and after they close.

Opens `--streams` streamed chat requests on the echo backend (`--capacity` jobs at once),
each answering about `--kb` KB of SSE, on sockets with a 64 KB receive window; reads only the
response head of each and then nothing more, holds them open for `--hold` seconds, then reads
each to see how it ends (`done`, `cut`: the api's error event or its close, `open`), closes
them all and samples the api's RSS (/proc) every second until `--after` seconds after the
close. The api buffers at most `LLMQ_STREAM_BUFFER_BYTES` per unread stream and closes it
after `LLMQ_STREAM_DRAIN_TIMEOUT` seconds (docs/operations.md). Outputs must be larger than
the kernel's socket buffers (several MB on loopback) for the api to hold anything at all.

    PYTHONPATH=$PWD .venv/bin/python bench/unread_streams.py --streams 150 --kb 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import llmq_stack, load_average, process_tree, rss_kib  # noqa: E402

CHUNK_BYTES = 190
"""About what one echoed word costs on the wire as an SSE chunk event."""


def request(port: int, kb: int) -> bytes:
    words = kb * 1000 // CHUNK_BYTES
    body = json.dumps(
        {
            "model": "bench",
            "stream": True,
            "max_tokens": words,
            "messages": [{"role": "user", "content": " ".join(["tok"] * words)}],
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def open_unread(
    port: int, payload: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A streamed request whose response head is read, and then nothing."""
    sock = socket.socket()  # a small receive window, set before connecting: the data waits
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # in the api, not here
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(payload)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    if head[9:12] != b"200":
        body = await asyncio.wait_for(reader.read(400), 10)
        writer.close()
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode() + " " + body.decode()[:200])
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    return reader, writer


async def ending(reader: asyncio.StreamReader, timeout: float = 10.0) -> str:
    """Read a held stream now: `done`, `cut` (the api's error event, or closed by it) or
    `open` (still flowing after `timeout` seconds)."""
    reader._transport.resume_reading()  # type: ignore[attr-defined]
    tail = b""
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(1 << 16):
                tail = (tail + data)[-600:]
                if b"stream_not_read" in tail:
                    return "cut (error event)"
                if b"data: [DONE]" in tail:
                    return "done"
    except TimeoutError:
        return "open"
    return "cut (closed)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--kb", type=int, default=1000, help="KB of SSE each stream answers")
    parser.add_argument("--hold", type=float, default=20.0)
    parser.add_argument("--after", type=float, default=60.0)
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds between echoed tokens (worker)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the api")
    parser.add_argument("--capacity", type=int, default=16, help="the worker's job slots")
    args = parser.parse_args()
    worker_env = {"LLMQ_ECHO_DELAY": str(args.delay)}
    env = dict(item.split("=", 1) for item in args.env)
    async with llmq_stack(capacity=args.capacity, env=env, worker_env=worker_env) as stack:
        api = process_tree(stack.procs["api"].pid)
        idle = rss_kib(api) // 1024
        print(f"load {load_average()}; api idle RSS {idle} MB")
        payload = request(stack.api_port, args.kb)
        t = time.monotonic()
        opened = await asyncio.gather(
            *(open_unread(stack.api_port, payload) for _ in range(args.streams)),
            return_exceptions=True,
        )
        print(f"opened in {time.monotonic() - t:.1f} s")
        writers = [w for w in opened if isinstance(w, tuple)]
        failed = [repr(e)[:300] for e in opened if isinstance(e, BaseException)]
        print(f"{len(writers)} streams open, {len(failed)} refused {sorted(set(failed))[:3]}")
        t0 = time.monotonic()
        peak = idle
        while time.monotonic() - t0 < args.hold:
            rss = rss_kib(api) // 1024
            peak = max(peak, rss)
            print(f"open  t={time.monotonic() - t0:5.1f}s api RSS {rss} MB", flush=True)
            await asyncio.sleep(1)
        ends = await asyncio.gather(*(ending(r) for r, _ in writers))
        print(f"how the streams end when read now: { {e: ends.count(e) for e in set(ends)} }")
        for _, writer in writers:
            writer.transport.abort()
        t1 = time.monotonic()
        rss = peak
        while time.monotonic() - t1 < args.after:
            await asyncio.sleep(1)
            rss = rss_kib(api) // 1024
            print(f"closed t={time.monotonic() - t1:5.1f}s api RSS {rss} MB", flush=True)
        print(
            f"streams {args.streams} x {args.kb} KB unread: api idle {idle} MB, peak {peak} MB "
            f"(+{peak - idle}), {args.after:.0f} s after close {rss} MB (+{rss - idle})"
        )


if __name__ == "__main__":
    asyncio.run(main())
