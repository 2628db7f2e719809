"""What the per-request ASGI machinery costs a hot route that takes only the `Request`: the
same endpoint as a FastAPI `APIRoute`, as a `PlainRoute` (api/routes/plain.py) inside the app,
and served by `HotPaths` (api/hot_paths.py) ahead of the app's middleware stack. The app is
built like the api's (its error handlers, the console's middleware, as many routes); calls go
straight through ASGI in this process (no socket), alternating rounds; CPU µs per request
(`time.process_time`), median round. `json`: one JSON reply; `stream`: an `SSEResponse` of 20
events (every event is one `send` through each layer's wrapper).

    PYTHONPATH=$PWD .venv/bin/python bench/hot_routes.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from starlette.responses import Response  # noqa: E402

from llmq import event_loop  # noqa: E402
from llmq.api.console.app import ConsoleHeaders  # noqa: E402
from llmq.api.errors import install_error_handlers  # noqa: E402
from llmq.api.hot_paths import HotPaths  # noqa: E402
from llmq.api.routes.plain import PlainRoute  # noqa: E402
from llmq.api.sse import DONE, SSEResponse, event  # noqa: E402

PATHS = {"json": "/v1/completions", "stream": "/v1/chat/completions"}
CHUNK = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[]}'


async def _json(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


async def _events() -> AsyncIterator[bytes]:
    for _ in range(19):
        yield event(CHUNK)
    yield DONE


async def _stream(request: Request) -> Response:
    return SSEResponse(_events())


def _app(route_class: type[APIRoute], stream: Callable[..., Any] = _stream) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    hot = APIRouter(prefix="/v1", route_class=route_class)
    hot.add_api_route("/completions", _json, methods=["POST"])
    hot.add_api_route("/chat/completions", stream, methods=["POST"])
    if route_class is PlainRoute:
        app.router.routes.extend(hot.routes)  # as the api adds them
    else:
        app.include_router(hot)
    for i in range(45):  # the api has about as many other routes
        other = APIRouter()
        other.add_api_route(f"/other{i}/{{item}}", _json, methods=["GET"])
        app.include_router(other)
    app.add_middleware(ConsoleHeaders)
    return app


async def _calls(app: Callable[..., Any], path: str, n: int) -> float:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
    }  # fmt: skip
    sent: list[int] = []
    body = {"type": "http.request", "body": b"{}", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def wait_forever() -> dict[str, Any]:
        await asyncio.get_running_loop().create_future()  # the SSE watcher: cancelled at the end
        raise AssertionError

    streaming = path == PATHS["stream"]

    async def send(message: dict[str, Any]) -> None:
        sent.append(1)

    started = time.process_time()
    for _ in range(n):
        await app({**scope, "state": {}}, wait_forever if streaming else receive, send)
    took = (time.process_time() - started) / n * 1e6
    assert len(sent) >= 2 * n
    return took


class _Hold:
    """The open streams of `--streams`: each has sent its first event and waits."""

    release: asyncio.Event
    first_sent = 0
    all_open: asyncio.Event


async def _held_events() -> AsyncIterator[bytes]:
    yield event(CHUNK)
    await _Hold.release.wait()
    yield DONE


async def _held_stream(request: Request) -> Response:
    return SSEResponse(_held_events())


async def _held(app: Callable[..., Any], n: int) -> float:
    """Python memory (tracemalloc) each of `n` open streams holds: every request has had its
    first event and waits for the next one, the SSE watcher waits for a disconnect."""
    _Hold.release, _Hold.all_open, _Hold.first_sent = asyncio.Event(), asyncio.Event(), 0

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            _Hold.first_sent += 1
            if _Hold.first_sent == n:
                _Hold.all_open.set()

    async def receive() -> dict[str, Any]:
        await asyncio.get_running_loop().create_future()
        raise AssertionError

    path = PATHS["stream"]
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json")],
    }  # fmt: skip
    loop = asyncio.get_running_loop()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tasks = [loop.create_task(app({**scope, "state": {}}, receive, send)) for _ in range(n)]
    await _Hold.all_open.wait()
    gc.collect()
    held = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    _Hold.release.set()
    await asyncio.gather(*tasks)
    return held


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--streams", type=int, default=0, help="only: bytes per open stream")
    args = parser.parse_args()
    if args.streams:
        print("| served as | Python bytes held per open stream (tracemalloc) |")
        print("|---|---|")
        for name, build in (
            ("FastAPI APIRoute", lambda: _app(APIRoute, _held_stream)),
            ("PlainRoute in the app (before)", lambda: _app(PlainRoute, _held_stream)),
            ("HotPaths ahead of the app (now)", lambda: HotPaths(_app(PlainRoute, _held_stream))),
        ):
            print(f"| {name} | {await _held(build(), args.streams):.0f} |")
        return
    plain = _app(PlainRoute)
    apps: dict[str, Callable[..., Any]] = {
        "FastAPI APIRoute": _app(APIRoute),
        "PlainRoute in the app (before)": plain,
        "HotPaths ahead of the app (now)": HotPaths(plain),
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for mode, path in PATHS.items():
        for app in apps.values():
            await _calls(app, path, 200)
        for _ in range(args.rounds):
            for name, app in apps.items():
                samples.setdefault((name, mode), []).append(await _calls(app, path, args.calls))
    print("| served as | json: CPU µs/request | stream (20 events): CPU µs/request |")
    print("|---|---|---|")
    for name in apps:
        cells = [f"{statistics.median(samples[(name, mode)]):.1f}" for mode in PATHS]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    event_loop.run(main())
