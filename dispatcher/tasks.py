"""Background-task helpers: stop a task for sure, retry an action until it succeeds.

On Python 3.11 `asyncio.wait_for` (used throughout the NATS client) can swallow a
cancellation when a reply races it, so `task.cancel(); await task` may wait forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_to_end(cleanup: Awaitable[None]) -> None:
    """Await `cleanup` to its end even if the caller is cancelled meanwhile (`stop_task`
    cancels repeatedly, which would cut a `finally` block short and leak its tasks)."""
    task = asyncio.ensure_future(cleanup)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def stop_task(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel a task and wait for it to end. Cancelled again until it does: asyncio.wait_for
    inside the NATS client can swallow one cancellation (a reply racing the cancel)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def retry(
    action: Callable[[], Awaitable[T]],
    what: str,
    *,
    until: Callable[[], bool] = lambda: False,
    pause: float = 0.25,
    max_pause: float = 2.0,
) -> T:
    """Run `action` until it succeeds (NATS down, a restart, a timeout: wait and again).
    Raises TimeoutError once `until()` is true."""
    delay = pause
    while True:
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if until():
                raise TimeoutError(what) from exc
            log.info("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_pause)
