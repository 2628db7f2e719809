"""The api's start: its port opens at once, while NATS and the streams are still awaited.

Probes and operators see the process: `/health` answers (alive), `/ready` answers 503 with
what the api waits for (NATS at its URL, a stream of a forming cluster), every other route a
503 `starting` with `Retry-After`. Each step is retried with backoff until the start-up
deadline (`LLMQ_STARTUP_TIMEOUT`); SIGTERM/SIGINT stop the waiting at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from llmq.dispatcher.connection import startup_deadline
from llmq.dispatcher.tasks import retry
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

OPEN_WHILE_STARTING = ("/health",)
"""Paths the app itself answers before it has started (they need no connection)."""


class Startup:
    """Where the api's start is: what it waits for, whether it is done or gave up."""

    def __init__(self, settings: Settings) -> None:
        self.deadline = startup_deadline(settings.connection)
        self.waiting_for = "start"
        self.ready = False
        self.failed = ""
        """Why the start was given up (the process then exits), empty otherwise."""

    async def step(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """`action`, retried with backoff until the start-up deadline."""
        self.waiting_for = what
        return await retry(action, f"api start: provisioning {what}", deadline=self.deadline)


class StartGate:
    """ASGI in front of the app: passes everything once the app has started; before, it
    answers for the app (see the module docstring). One attribute look per request."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # as on the app: `ApiServer` and the tests read it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup: Startup | None = getattr(self.state, "startup", None)
        if (
            scope["type"] != "http"
            or startup is None
            or startup.ready
            or scope["path"] in OPEN_WHILE_STARTING
        ):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/ready":
            status = "failed" if startup.failed else "starting"
            body: dict[str, object] = {
                "status": status,
                "waiting_for": startup.waiting_for,
                "failing": [status],
            }
        else:
            body = {
                "error": {
                    "message": f"llmq is starting (waiting for {startup.waiting_for}); "
                    "retry shortly",
                    "type": "service_unavailable",
                    "code": "starting",
                }
            }
        await _send_json(send, 503, body, {"retry-after": "1"})


async def _send_json(send: Send, status: int, body: object, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
