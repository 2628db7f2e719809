"""Server-Sent Events relay that notices a client leaving even when no token is flowing.

Starlette's StreamingResponse only learns of a disconnect when a write fails; a client that
leaves during a long pause would keep its job running. Here a watcher task waits for
`http.disconnect` and cancels the writing task, whose cleanup publishes the job's cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def named_event(name: bytes, data: bytes) -> bytes:
    """An SSE event with its `event:` line (the Responses API names every event)."""
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.events = events
        self.extra_headers = dict(headers or {})
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        await self._relay(send, receive, raw_headers)

    async def _relay(
        self, send: Send, receive: Receive, raw_headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Write in this task; one watcher task cancels it when the client leaves (one task
        per open stream, not two: less memory and scheduling per stream)."""
        writing = asyncio.current_task()
        assert writing is not None
        state = {"left": False, "finished": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["finished"]:
                state["left"] = True
                writing.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._write(send, raw_headers)
        except asyncio.CancelledError:
            # The client left: the writer's cleanup cancelled the job; the response ends
            # here. Cut from outside (the shutdown grace ran out): the same cleanup, then
            # the cancellation goes on.
            if not state["left"] or writing.uncancel() > 0:
                raise
        except OSError:
            pass  # the socket went away under a write
        finally:
            state["finished"] = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _write(self, send: Send, raw_headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        try:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
