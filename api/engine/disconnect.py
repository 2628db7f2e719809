"""A client that goes away cancels its request: its job, on the worker and upstream too.

Once the body is read, the next ASGI message a server sends is `http.disconnect`, when the
client closes its connection. `unless_gone` watches for that message while the request's
work runs: if the client leaves first, the work is cancelled, which closes the job's event stream
(`JobRun.close` publishes `llmq.cancel.<job>`; the worker cancels the backend's call), settles
its reservation as `499 client_closed` with what was used, and frees its fair-share place.
A stream, once it started, is watched by the streaming response itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

CLIENT_CLOSED = 499
"""nginx's status for a client that closed its request; nobody reads it, the log does."""


async def _cancel_when_gone(request: Request, task: asyncio.Task[object], gone: list[bool]) -> None:
    """Cancel `task` once the client has gone (the request's next message is its close)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            task.cancel()
            return


async def unless_gone(request: Request, work: Awaitable[Response]) -> Response:
    """`work`'s response, or an empty 499 once the client has gone (the work cancelled).
    One watcher task per request, which cancels this one: no second task, no `wait`."""
    task = asyncio.current_task()
    if task is None:
        return await work
    gone: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(_cancel_when_gone(request, task, gone))
    try:
        return await work
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:  # cancelled from elsewhere too: go on cancelling
            raise
        return Response(status_code=CLIENT_CLOSED)
    finally:
        if not watcher.done():
            watcher.cancel()
        elif not watcher.cancelled():
            watcher.exception()  # read (a request it could not read): the work went unwatched
