"""CPU per streamed upstream call, per HTTP client, over http and https.

One streamed chat call (20 SSE `data:` lines) to `bench/mock_upstream.py`, which runs in its
own processes (one http, one https with a certificate from a throwaway CA), so the figure
is the client process's CPU alone (`time.process_time`), under uvloop. The combinations run
interleaved in rounds and each reports its median round, so a load spike from another
process on a shared machine hits them all alike.

    PYTHONPATH=$PWD python -m bench.upstream_client --calls 3000

aiohttp is measured when it can be imported (it is not one of llmq's dependencies:
`pip install --target /tmp/aiohttp-pkgs aiohttp` and add that folder to PYTHONPATH).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.processes import spawn, stop_all
from llmq.worker.upstream.client import UpstreamClient
from llmq.worker.upstream.connect import Connection, Origin
from llmq.worker.upstream.fast_client import FastClient
from llmq.worker.upstream.httpx_client import HttpxClient
from tests.worker.upstream.pki import make_pki

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}]}'
WORDS = 17
"""17 content chunks + the finish chunk + the usage chunk + `[DONE]` = 20 `data:` lines."""

Call = Callable[[str], Awaitable[int]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"mock upstream on port {port} not ready")


def _ours(client: UpstreamClient) -> Call:
    async def call(url: str) -> int:
        lines = 0
        async with client.stream(url, BODY) as batches:
            async for batch in batches:
                lines += sum(1 for line in batch if line.startswith("data:"))
        return lines

    return call


class TransportTlsClient(FastClient):
    """The lean client with TLS left to the event loop's transport (uvloop's SSLProtocol)
    instead of `tls.TlsSession`: kept here only to compare the two (docs/benchmarks.md)."""

    async def _acquire(self, origin: Origin) -> tuple[Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        _, host, port = origin
        if origin[0] != "https":
            return Connection(*await asyncio.open_connection(host, port)), False
        opened = await asyncio.open_connection(host, port, ssl=self._tls, server_hostname=host)
        return Connection(*opened), False


def _aiohttp(tls: ssl.SSLContext) -> tuple[Call, Callable[[], Awaitable[None]]] | None:
    try:
        import aiohttp
    except ImportError:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=tls, limit=0),
        headers={"user-agent": "llmq-bench", "content-type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=None, connect=5),
    )

    async def call(url: str) -> int:
        lines = 0
        async with session.post(url, data=BODY) as response:
            response.raise_for_status()
            async for line in response.content:
                lines += line.startswith(b"data:")
        return lines

    return call, session.close


async def measure(calls: int, rounds: int, urls: dict[str, str], tls: ssl.SSLContext) -> None:
    headers = {"user-agent": "llmq-bench"}
    fast, httpx_client = FastClient(headers, 5.0, tls=tls), HttpxClient(headers, 5.0, tls=tls)
    transport = TransportTlsClient(headers, 5.0, tls=tls)
    clients: dict[str, Call] = {
        "fast (llmq)": _ours(fast),
        "fast, loop's TLS transport": _ours(transport),
        "httpx": _ours(httpx_client),
    }
    closers = [fast.aclose, transport.aclose, httpx_client.aclose]
    made = _aiohttp(tls)
    if made is not None:
        clients["aiohttp"] = made[0]
        closers.append(made[1])
    per_round = max(calls // rounds, 1)
    samples: dict[tuple[str, str], list[float]] = {}
    for name, call in clients.items():
        for scheme, url in urls.items():
            for _ in range(50):  # warm: connections, caches
                assert await call(url) == 20, f"{name} {scheme}: not 20 data lines"
    for _ in range(rounds):
        for name, call in clients.items():
            for scheme, url in urls.items():
                started = time.process_time()
                for _ in range(per_round):
                    await call(url)
                cpu = (time.process_time() - started) / per_round
                samples.setdefault((name, scheme), []).append(cpu)
    for close in closers:
        await close()
    load = os.getloadavg()
    print(f"{per_round * rounds} calls each, {rounds} rounds, load average {load[0]:.2f}")
    print("| client | http CPU µs/call | https CPU µs/call | https / http |")
    print("|---|---|---|---|")
    for name in clients:
        http = statistics.median(samples[(name, "http")]) * 1e6
        https = statistics.median(samples[(name, "https")]) * 1e6
        print(f"| {name} | {http:,.0f} | {https:,.0f} | {https / http:.2f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pki = make_pki(tmp)
        http_port, https_port = _free_port(), _free_port()
        mock = [sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
        words = ["--words", str(WORDS)]
        tls_files = ["--certfile", str(pki.cert), "--keyfile", str(pki.key)]
        procs = [
            spawn([*mock, str(http_port), *words], {}, tmp / "http.log"),
            spawn([*mock, str(https_port), *words, *tls_files], {}, tmp / "https.log"),
        ]
        try:
            await _wait_listening(http_port)
            await _wait_listening(https_port)
            path = "/v1/chat/completions"
            urls = {
                "http": f"http://127.0.0.1:{http_port}{path}",
                "https": f"https://127.0.0.1:{https_port}{path}",
            }
            await measure(args.calls, args.rounds, urls, pki.client_context())
        finally:
            stop_all(procs)


if __name__ == "__main__":
    uvloop.run(main())
