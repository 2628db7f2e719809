"""Server-Sent Events relay that notices a client leaving even when no token is flowing.

Starlette's StreamingResponse only learns of a disconnect when a write fails; a client that
leaves during a long pause would keep its job running. Here a second task waits for
`http.disconnect` and cancels the writer, whose cleanup publishes the job's cancel.
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
        writer = asyncio.create_task(self._write(send, raw_headers))
        watcher = asyncio.create_task(self._watch(receive))
        try:
            done, _ = await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Cut from outside (the shutdown grace ran out): stop writing, so the relay's
            # cleanup cancels the job instead of the stream running on unseen.
            for task in (writer, watcher):
                task.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            raise
        for task in (writer, watcher):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        if writer in done and writer.exception() is not None:
            exc = writer.exception()
            if not isinstance(exc, OSError):
                raise exc  # type: ignore[misc]

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
