"""Ride out a short quota-store outage (a Sentinel failover, a restart) instead of refusing.

A request that finds Redis/Valkey unreachable waits, up to `LLMQ_QUOTA_STORE_WAIT` seconds
and never past its own deadline, for the store to answer again, then takes the normal exact
path; only after that is it refused (503 `quota_store_down`, or served unchecked with
`quota_fail_open`). Nothing is admitted while waiting, so no limit is weakened. One watcher
per replica pings the store with a short backoff and wakes every waiter at once when it
answers, so a thousand waiting requests cost one ping per backoff step, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llmq.api.tenancy.errors import QuotaBackendDown, backend_guard
from llmq.schemas.admission import Refusal, Reservation

log = logging.getLogger(__name__)

FIRST_PROBE = 0.05
"""Seconds before the first ping after a failure (a failover takes ~1-3 s)."""
MAX_PROBE = 0.4
"""Largest pause between pings while the store stays away."""

QUOTA_STORE_RETRY = 1.0
"""Seconds a client (or a batch line) waits before asking again once refused for it."""

T = TypeVar("T")


def store_down(fail_open: bool, tenant: str, model: str, job_id: str) -> Reservation | Refusal:
    """The store stayed away past the wait: served unchecked (`fail_open`), else a 503."""
    if fail_open:
        log.warning("redis down: admitting %s without a quota check", job_id)
        return Reservation(tenant, model, job_id, held=False)
    return Refusal(
        503, "the quota store is unavailable", "quota_store_down", retry_after=QUOTA_STORE_RETRY
    )


class StoreWait:
    """Shared "the store is back" signal for the requests of one replica."""

    def __init__(self, probe: Callable[[], Awaitable[Any]], limit: float) -> None:
        self._probe = probe
        self.limit = limit
        """Most seconds a request waits for the store (0: refuse at once, as before)."""
        self._back = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._waiters = 0
        self.outages = 0
        """Times a watcher started (observability, tests)."""

    def end(self, wait: float | None = None) -> float:
        """The monotonic time a request that may wait `wait` s (its own deadline; None:
        no deadline of its own) stops waiting for the store."""
        limit = self.limit if wait is None else max(0.0, min(wait, self.limit))
        return time.monotonic() + limit

    async def back(self, end: float) -> bool:
        """Wait until the store answers a ping (True) or `end` (monotonic) passes (False)."""
        left = end - time.monotonic()
        if left <= 0:
            return False
        if self._watcher is None or self._watcher.done():
            self._back = asyncio.Event()
            self.outages += 1
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        back = self._back
        self._waiters += 1
        try:
            async with asyncio.timeout(left):
                await back.wait()
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1
        return True

    async def _watch(self) -> None:
        """Ping with backoff until the store answers (wake everyone) or nobody waits."""
        pause = FIRST_PROBE
        while True:
            await asyncio.sleep(pause)
            if not self._waiters:
                return
            try:
                with backend_guard():
                    await self._probe()
            except QuotaBackendDown:
                pause = min(pause * 2, MAX_PROBE)
                continue
            except Exception as exc:  # an error reply is an answer: let the retry see it
                log.debug("quota store probe: %s", type(exc).__name__)
            self._back.set()
            return

    async def run(self, call: Callable[[], Awaitable[T]], wait: float | None = None) -> T:
        """`call()`, retried while it raises `QuotaBackendDown` and the store comes back
        within the wait; the last `QuotaBackendDown` is raised when it does not."""
        end: float | None = None
        while True:
            try:
                return await call()
            except QuotaBackendDown:
                end = self.end(wait) if end is None else end
                if not await self.back(end):
                    raise
