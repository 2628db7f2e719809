"""What FastAPI's per-request machinery costs a route that takes only the `Request`:
the same endpoint as a FastAPI `APIRoute` and as a `PlainRoute` (api/routes/plain.py), in
an app with as many routes as the api, called straight through ASGI in this process (no
socket), alternating rounds; CPU µs per request (`time.process_time`), median round.

    PYTHONPATH=$PWD .venv/bin/python bench/hot_routes.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi import APIRouter, FastAPI, Request  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from starlette.responses import Response  # noqa: E402

from llmq import event_loop  # noqa: E402
from llmq.api.routes.plain import PlainRoute  # noqa: E402

PATH = "/v1/chat/completions"


async def _endpoint(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


def _app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    hot = APIRouter(prefix="/v1", route_class=route_class)
    hot.add_api_route("/chat/completions", _endpoint, methods=["POST"])
    if route_class is PlainRoute:
        app.router.routes.extend(hot.routes)  # as the api adds them
    else:
        app.include_router(hot)
    for i in range(45):  # the api has about as many other routes
        other = APIRouter()
        other.add_api_route(f"/other{i}/{{item}}", _endpoint, methods=["GET"])
        app.include_router(other)
    return app


async def _calls(app: FastAPI, n: int) -> float:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "root_path": "",
        "query_string": b"", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    started = time.process_time()
    for _ in range(n):
        await app({**scope, "state": {}}, receive, send)
    took = (time.process_time() - started) / n * 1e6
    assert sent[0]["status"] == 200 and len(sent) == 2 * n
    return took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    apps = {"FastAPI APIRoute": _app(APIRoute), "PlainRoute": _app(PlainRoute)}
    for app in apps.values():
        await _calls(app, 300)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, app in apps.items():
            samples[name].append(await _calls(app, args.calls))
    print("| route | CPU µs per request (median round) |")
    print("|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    event_loop.run(main())
