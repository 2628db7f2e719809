"""A client that goes away cancels its request: its job, on the worker and upstream too.

Once the body is read, the next ASGI message a server sends is `http.disconnect`, when the
client closes its connection. `unless_gone` races the request's work against that message:
if the client leaves first, the work is cancelled, which closes the job's event stream
(`JobRun.close` publishes `llmq.cancel.<job>`; the worker cancels the backend's call), settles
its reservation as `499 client_closed` with what was used, and frees its fair-share place.
A stream, once it started, is watched by the streaming response itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

CLIENT_CLOSED = 499
"""nginx's status for a client that closed its request; nobody reads it, the log does."""


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_gone(request: Request, work: Awaitable[Response]) -> Response:
    """`work`'s response, or an empty 499 once the client has gone (the work cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if gone.exception() is not None:  # cannot tell: the work goes on
            return await task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return Response(status_code=CLIENT_CLOSED)
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
