"""Server-Sent Events relay that notices a client leaving even when no token is flowing.

Starlette's StreamingResponse only learns of a disconnect when a write fails; a client that
leaves during a long pause would keep its job running. Here a watcher task waits for
`http.disconnect` and cancels the writing task, whose cleanup publishes the job's cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from llmq.api.edge import END_MID_RESPONSE

DONE = b"data: [DONE]\n\n"


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def named_event(name: bytes, data: bytes) -> bytes:
    """An SSE event with its `event:` line (the Responses API names every event)."""
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


class SSEResponse(Response):
    """Writes in the task that serves the request; one watcher task (per open stream, not
    two) cancels it when the client leaves. One coroutine frame for the writer, the
    watcher a method: every frame and closure here is held for as long as a stream is open
    (docs/benchmarks.md, memory per open stream)."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.events = events
        self.extra_headers = dict(headers or {})
        self.status_code = 200
        self.background = None
        self._writing: asyncio.Task[Any] | None = None
        """The writing task while it writes; the watcher cancels it only then."""
        self._left = False
        self._end: Any = None
        """The server's way to end the response mid-body (`edge.END_MID_RESPONSE`), if any."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._end = (scope.get("extensions") or {}).get(END_MID_RESPONSE, {}).get("end")
        self._writing = asyncio.current_task()
        assert self._writing is not None
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            try:
                await send(self._start())
                async for data in self.events:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                aclose = getattr(self.events, "aclose", None)
                if aclose is not None:
                    await aclose()
        except asyncio.CancelledError:
            # The client left: the writer's cleanup cancelled the job; the response ends
            # here. Cut from outside (the shutdown grace ran out): the same cleanup, then
            # the cancellation goes on.
            if not self._left or self._writing.uncancel() > 0:
                raise
        except OSError:
            pass  # the socket went away under a write
        finally:
            self._writing = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def cut(self) -> None:
        """End the response now, as if its client had left (it stopped reading): the
        writer's cleanup runs and the server closes the connection, the body cut short
        (without `END_MID_RESPONSE`, uvicorn does so as for an app that forgot its end)."""
        writing = self._writing
        if writing is not None:
            self._left = True
            writing.cancel()
            if self._end is not None:
                self._end()

    def _start(self) -> Message:
        """The response start (its header list is not held while the stream is open)."""
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]
        return {"type": "http.response.start", "status": 200, "headers": headers}

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        writing = self._writing
        if writing is not None:
            self._left = True
            writing.cancel()
