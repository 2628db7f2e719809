"""A circuit breaker per worker: after `threshold` consecutive backend failures the worker
stops asking for jobs (so they go to healthy workers) and probes its backend every
`probe_interval`. The first probe that gets an answer makes the circuit half-open: the
worker fetches again, and its next job decides (a success closes the circuit, a failure
opens it again). Without traffic, a second good probe closes it, so an idle worker does not
stay half-open for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from llmq.dispatcher.tasks import stop_task

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        probe_interval: float,
        probe: Callable[[], Awaitable[bool]],
        on_change: Callable[[str], None],
    ) -> None:
        self.threshold = threshold
        self.probe_interval = probe_interval
        self._probe = probe
        self._on_change = on_change
        self.state = CLOSED
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, backend_failed: bool) -> None:
        if not backend_failed:
            self.failures = 0
            if self.state == HALF_OPEN:
                self._set(CLOSED)
            return
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self._open()

    def _open(self) -> None:
        self._set(OPEN)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._probe_until_healthy(), name="breaker-probe")

    async def _probe_until_healthy(self) -> None:
        while self.state != CLOSED:
            await asyncio.sleep(self.probe_interval)
            healthy = False
            with contextlib.suppress(Exception):
                healthy = await self._probe()
            if not healthy:
                if self.state == HALF_OPEN:
                    self._set(OPEN)
                continue
            self.failures = 0
            if self.state == OPEN:
                log.info("backend answers again; circuit half-open")
                self._set(HALF_OPEN)
            elif self.state == HALF_OPEN:
                self._set(CLOSED)

    def _set(self, state: str) -> None:
        if state != self.state:
            log.warning("circuit %s -> %s", self.state, state)
            self.state = state
            self._on_change(state)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
