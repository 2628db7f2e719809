"""llmq's SSE writer (`api/sse.py`) against sse-starlette's `EventSourceResponse`, same server.

Each writer is served alone by uvicorn (uvloop, httptools: what the api runs) in its own
process, from one Starlette app whose only route streams a pre-built chat.completion.chunk
event (`chunks` of them, `interval` seconds apart, then a silent `pause`, then [DONE]):

- CPU per relayed chunk: the server's CPU (/proc) over streams of 20 and of 400 chunks sent
  back to back by 8 connections; the slope between the two is the cost of one chunk, the
  rest the cost of one stream;
- memory per open stream: RSS after `--streams` streams are open and have each had a first
  event, minus RSS before (one event a second afterwards, as a slow upstream would send);
- a disconnect during a silent pause: the client reads the first event and closes; the
  server records when the generator was closed (the relay's cleanup cancels the job there);
- pings: what reaches a client during a silent pause, and whether the `openai` SDK reads the
  stream with the pings in it.

    .venv/bin/python bench/sse_writer.py                 # all writers, every measure
    .venv/bin/python bench/sse_writer.py --repeat 3 --streams 2000

Writers: `llmq` (api/sse.SSEResponse), `sse-starlette` (EventSourceResponse fed the same
pre-framed bytes, default 15 s ping), `sse-starlette-event` (fed ServerSentEvent objects: the
library's own framing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, load_average, rss_kib, spawn  # noqa: E402
from llmq.embedded import free_port  # noqa: E402

WRITERS = ["llmq", "sse-starlette", "sse-starlette-event"]
CHUNK = json.dumps(
    {
        "id": "chatcmpl-0123456789abcdef",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
    },
    separators=(",", ":"),
).encode()


def make_app(writer: str) -> Any:
    """The server side: one route, the writer named on the command line."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from llmq.api.sse import DONE, SSEResponse, event

    closed: dict[str, float] = {}

    async def events(params: Any, framed: bool) -> Any:
        n, interval = int(params.get("chunks", 20)), float(params.get("interval", 0))
        pause = float(params.get("pause", 0))
        try:
            for _ in range(n):
                if interval:
                    await asyncio.sleep(interval)
                yield event(CHUNK) if framed else ServerSentEvent(data=CHUNK.decode())
            if pause:
                await asyncio.sleep(pause)
            yield DONE if framed else ServerSentEvent(data="[DONE]")
        finally:
            closed[params.get("id", "")] = time.monotonic()

    async def stream(request: Request) -> Response:
        params = request.query_params
        if writer == "llmq":
            return SSEResponse(events(params, True))
        ping = float(params.get("ping", 15))
        return EventSourceResponse(events(params, writer == "sse-starlette"), ping=ping)

    async def closed_at(request: Request) -> Response:
        return JSONResponse({"at": closed.get(request.path_params["id"])})

    if writer != "llmq":
        from sse_starlette import EventSourceResponse, ServerSentEvent
    routes = [
        Route("/closed/{id}", closed_at),
        Route("/v1/chat/completions", stream, methods=["POST"]),
        Route("/stream", stream),
    ]
    return Starlette(routes=routes)


def serve(writer: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        make_app(writer), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False, backlog=4096,
    )  # fmt: skip


# --- the client side -------------------------------------------------------------------


async def _open(port: int, query: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """The chunked body whole (the stream's events)."""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:-2]
        if size == 0:
            return body


async def _streams(port: int, chunks: int, seconds: float, conns: int = 8) -> int:
    """Streams of `chunks` events read back to back on `conns` connections; how many."""
    deadline = time.monotonic() + seconds
    request = f"GET /stream?chunks={chunks} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    async def loop() -> int:
        done = 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await _read_to_end(reader)
            done += 1
        writer.close()
        return done

    return sum(await asyncio.gather(*[loop() for _ in range(conns)]))


async def cpu_per_chunk(port: int, pid: int, seconds: float) -> dict[str, float]:
    """Server CPU per stream at 20 and at 400 chunks; the slope is one chunk's cost."""
    per_stream = {}
    for chunks in (20, 400):
        await _streams(port, chunks, 1)  # warm-up
        before = cpu_seconds([pid])
        count = await _streams(port, chunks, seconds)
        per_stream[chunks] = (cpu_seconds([pid]) - before) * 1e6 / count
    slope = (per_stream[400] - per_stream[20]) / 380
    return {
        "us_per_chunk": slope,
        "us_per_stream": per_stream[20] - 20 * slope,
        "us_20_chunk_stream": per_stream[20],
    }


async def memory_per_stream(port: int, pid: int, streams: int) -> dict[str, float]:
    """RSS added per open stream (one event a second, each stream has had its first)."""
    warm = [await _open(port, "chunks=2&interval=0.01") for _ in range(20)]
    for reader, writer in warm:
        await _read_to_end(reader)
        writer.close()
    await asyncio.sleep(0.5)
    before = rss_kib([pid])
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(0, streams, 100):  # in batches: the accept backlog stays short
        opened += await asyncio.gather(
            *[_open(port, "chunks=120&interval=1") for _ in range(min(100, streams - i))]
        )
    await asyncio.gather(*[r.readuntil(b"data: ") for r, _ in opened])  # each has an event
    await asyncio.sleep(1.5)
    after = rss_kib([pid])
    for _, writer in opened:
        writer.close()
    return {"kib_per_stream": (after - before) / streams, "rss_before_mib": before / 1024}


async def disconnect_in_pause(port: int, ping: float) -> float | None:
    """Seconds from the client closing (during a 20 s silent pause) to the generator closed."""
    sid = f"d{time.monotonic_ns()}"
    reader, writer = await _open(port, f"chunks=1&pause=20&id={sid}&ping={ping}")
    await reader.readuntil(b"data: ")
    writer.close()
    t0 = time.monotonic()
    async with httpx_client() as client:
        while time.monotonic() - t0 < 25:
            at = (await client.get(f"http://127.0.0.1:{port}/closed/{sid}")).json()["at"]
            if at is not None:
                return float(at) - t0
            await asyncio.sleep(0.005)
    return None


async def pings_in_pause(port: int) -> bytes:
    """What a client receives during a 2.5 s silent pause (ping every second)."""
    reader, writer = await _open(port, "chunks=1&pause=2.5&ping=1")
    body = await asyncio.wait_for(_read_to_end(reader), 10)
    writer.close()
    return body


def sdk_reads_stream(port: int) -> str:
    """The `openai` SDK on a stream with pings in a pause: every chunk parsed, or the error."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    try:
        stream = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_query={"chunks": "3", "interval": "0", "pause": "2.5", "ping": "1"},
        )  # fmt: skip
        got = [c.choices[0].delta.content for c in stream]
        return f"ok, {len(got)} chunks"
    except Exception as exc:  # the figure is whether it breaks, and how
        return f"{type(exc).__name__}: {exc}"


def httpx_client() -> Any:
    import httpx

    return httpx.AsyncClient(timeout=5)


async def run_writer(writer: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from bench.processes import wait_until_served

    port = free_port()
    proc = spawn(
        [sys.executable, __file__, "--serve", writer, "--port", str(port)], {}, tmp / "srv.log"
    )
    try:
        await wait_until_served(f"http://127.0.0.1:{port}/closed/x", '"at"')
        out: dict[str, Any] = {"writer": writer}
        cpu = [await cpu_per_chunk(port, proc.pid, args.seconds) for _ in range(args.repeat)]
        out["load_cpu"] = load_average()
        for key in cpu[0]:
            out[key] = statistics.median(c[key] for c in cpu)
            out[key + "_all"] = [round(c[key], 1) for c in cpu]
        out.update(await memory_per_stream(port, proc.pid, args.streams))
        out["load_mem"] = load_average()
        waits = [await disconnect_in_pause(port, 15) for _ in range(5)]
        out["disconnect_s"] = [None if w is None else round(w * 1000) for w in waits]
        out["pings"] = (await pings_in_pause(port)).count(b": ping")
        out["sdk"] = await asyncio.to_thread(sdk_reads_stream, port)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llmq-sse-"))
    print(f"uvicorn+uvloop+httptools, repeat={args.repeat}, streams={args.streams}")
    for writer in args.writers:
        r = await run_writer(writer, args, tmp)
        print(
            f"{writer}: CPU {r['us_per_chunk']:.1f} µs/chunk {r['us_per_chunk_all']}, "
            f"{r['us_per_stream']:.0f} µs/stream, 20-chunk stream {r['us_20_chunk_stream']:.0f} µs "
            f"(load {r['load_cpu']}); RSS {r['kib_per_stream']:.1f} KiB/open stream "
            f"(base {r['rss_before_mib']:.0f} MiB, load {r['load_mem']}); disconnect in a "
            f"silent pause noticed after {r['disconnect_s']} ms; pings in 2.5 s at ping=1: "
            f"{r['pings']}; openai SDK: {r['sdk']}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=WRITERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--writers", nargs="+", choices=WRITERS, default=WRITERS)
    parser.add_argument("--seconds", type=float, default=4, help="per CPU measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
    else:
        asyncio.run(main(args))
