"""Mounting the console on the api: its routers, its static files and its headers (a strict
Content-Security-Policy: scripts and styles of our own origin only, no inline script)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmq.api.console import auth, data
from llmq.api.console.live import LiveStats
from llmq.api.engine.serving import Serving

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def install(app: FastAPI) -> None:
    app.include_router(auth.router, include_in_schema=False)
    app.include_router(data.router, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/ui", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/ui/", include_in_schema=False)
    async def slash() -> Response:
        return RedirectResponse("/ui", status_code=308)

    app.add_middleware(ConsoleHeaders)


class ConsoleHeaders:
    """Adds the console's security headers to its responses (`/ui...`); any other request
    passes straight through (a pure ASGI middleware: nothing wraps the api's streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def attach(app: FastAPI, serving: Serving) -> None:
    """In the lifespan: the overview's live figures observe every request."""
    app.state.console_live = LiveStats()
    serving.observers.append(app.state.console_live.observe)
