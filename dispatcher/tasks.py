"""Background-task helpers: stop a task for sure, retry an action until it succeeds.

On Python 3.11 `asyncio.wait_for` (used throughout the NATS client) can swallow a
cancellation when a reply races it, so `task.cancel(); await task` may wait forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
    deadline: float | None = None,
    retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
    pause: float = 0.25,
    max_pause: float = 2.0,
) -> T:
    """Run `action` until it succeeds (NATS down, a restart, a forming cluster, a stream not
    provisioned yet: wait and again), the pause doubling up to `max_pause`. Raises
    TimeoutError once `until()` is true or the monotonic `deadline` has passed; an error
    that is not a `retry_on` is raised at once. The first
    failure is logged as a warning that says what is awaited, the rest at info."""
    delay = pause
    failures = 0
    while True:
        try:
            result = await action()
        except asyncio.CancelledError:
            raise
        except retry_on as exc:
            if until() or (deadline is not None and time.monotonic() >= deadline):
                raise TimeoutError(f"gave up {what}: {_reason(exc)}") from exc
            failures += 1
            log.log(
                logging.WARNING if failures == 1 else logging.INFO,
                "%s: not yet (%s); retrying in %.2g s",
                what,
                _reason(exc),
                delay,
            )
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_pause)
        else:
            if failures:
                log.info("%s: done after %d retries", what, failures)
            return result


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
