"""What the HTTP edge's limits (`api/edge.py`) cost per request: uvicorn's httptools protocol
against `EdgeProtocol`, in one process, on one event loop, without sockets.

Each round feeds `--requests` keep-alive requests (a chat POST with the headers the openai
SDK sends and a small JSON body) to one protocol instance over an in-memory transport; a
minimal ASGI app reads the body and answers 200. The CPU time per request of both protocols is
the best of `--repeat` alternating rounds; the difference is the edge's cost.

    .venv/bin/python bench/edge.py
    .venv/bin/python bench/edge.py --requests 50000 --repeat 7
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from llmq.api.edge import EdgeLimits, EdgeProtocol  # noqa: E402

BODY = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"
    b"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\naccept: application/json\r\n"
    b"content-type: application/json\r\nuser-agent: AsyncOpenAI/Python 1.99.0\r\n"
    b"x-stainless-lang: python\r\nx-stainless-package-version: 1.99.0\r\n"
    b"x-stainless-os: Linux\r\nx-stainless-arch: x64\r\nx-stainless-runtime: CPython\r\n"
    b"x-stainless-runtime-version: 3.11.7\r\nauthorization: Bearer sk-llmq-0123456789\r\n"
    b"x-stainless-async: async:asyncio\r\nx-stainless-retry-count: 0\r\n"
    b"x-stainless-read-timeout: 600\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n"
) + BODY


class Transport(asyncio.Transport):
    """Takes what the protocol writes and drops it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self._closing = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def round_of(cls: type[HttpToolsProtocol], requests: int) -> float:
    """Seconds per request over `requests` sequential keep-alive requests."""
    config = Config(app=app, lifespan="off", log_config=None, access_log=False)
    config.load()
    loop = asyncio.get_running_loop()
    proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    proto.connection_made(Transport())
    start = time.process_time()  # CPU time: the machine may be busy with others
    for _ in range(requests):
        proto.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs and answers
        await asyncio.sleep(0)
    took = time.process_time() - start
    proto.connection_lost(None)
    return took / requests


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    edge = EdgeProtocol.with_limits(EdgeLimits())
    best: dict[str, float] = {"httptools": float("inf"), "edge": float("inf")}
    for _ in range(args.repeat):
        for name, cls in (("httptools", HttpToolsProtocol), ("edge", edge)):
            best[name] = min(best[name], await round_of(cls, args.requests))
    for name, seconds in best.items():
        print(f"{name:10} {seconds * 1e6:7.2f} µs per request (best of {args.repeat})")
    print(f"edge cost  {(best['edge'] - best['httptools']) * 1e6:7.2f} µs per request")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
