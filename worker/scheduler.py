"""Capacity: which job runs when, and how much each feed may ask for.

A worker never runs more than `capacity` jobs. Interactive feeds hold lingering pull credit
for the free slots, topped up once an eighth of the capacity is missing from it (or none is
left), so a busy worker of capacity 64 sends one pull request per 8 jobs, not one per job;
batch feeds only poll (no-wait) when slots are free and nothing interactive is waiting, so
interactive traffic always goes first. A job that arrives when every slot is taken (two
feeds answered at once) is held, interactive before batch, and started by the next free
slot; held jobs are kept alive with in-progress acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from llmq.dispatcher.tasks import stop_task
from llmq.worker.feed import PullFeed

log = logging.getLogger(__name__)

TICK = 0.25
"""Seconds between the credit loop's looks when nothing kicks it."""
REFILL = 8
"""A lingering feed asks again once `capacity // REFILL` (at least 1) jobs are missing from
its credit, or it has none left while slots are free."""


class Scheduler:
    def __init__(
        self,
        capacity: int,
        run_job: Callable[[Msg], Awaitable[None]],
        ack_wait: float,
    ) -> None:
        self.capacity = capacity
        self.refill = max(1, capacity // REFILL)
        """Jobs missing from a lingering feed's credit before it asks again."""
        self._run_job = run_job
        self._ack_wait = ack_wait
        self.feeds: list[PullFeed] = []
        self.running = 0
        self.peak = 0
        self._held: list[tuple[int, int, Msg]] = []
        self._order = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kick = asyncio.Event()
        self._ticker: asyncio.TimerHandle | None = None
        self._paused = False
        self._loop_task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    # --- feeds call these --------------------------------------------------------------

    def on_job(self, msg: Msg, feed: PullFeed) -> None:
        if self.running < self.capacity and not self._held:
            self._start(msg)
            if feed.lingering and self._missing(feed) == 0:
                # Credit stays even (one slot taken, one job less asked for): nothing to top
                # up, so the credit loop is not woken on the job's way to its backend.
                return
        else:
            heapq.heappush(self._held, (feed.priority, next(self._order), msg))
            self.idle.clear()
        self.kick()

    def kick(self) -> None:
        self._kick.set()

    # --- control -----------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop asking for jobs (circuit open, draining); running and held jobs go on."""
        self._paused = True
        self.kick()

    def resume(self) -> None:
        self._paused = False
        self.kick()

    @property
    def in_flight(self) -> int:
        return self.running

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._credit_loop(), name="scheduler")

    async def stop(self) -> None:
        if self._loop_task is not None:
            await stop_task(self._loop_task)
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs or is held; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self.idle.wait()
            return True
        except TimeoutError:
            return False

    async def hand_back_held(self) -> int:
        """Give jobs that wait for a slot back to JetStream at once (draining)."""
        held, self._held = self._held, []
        for _, _, msg in held:
            with contextlib.suppress(Exception):
                await msg.nak()
        if self.running == 0:
            self.idle.set()
        return len(held)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # --- internals ---------------------------------------------------------------------

    def _start(self, msg: Msg) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.idle.clear()
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._run_job(msg)
        except Exception:
            log.exception("job runner failed")
        finally:
            self.running -= 1
            while self._held and self.running < self.capacity:
                self._start(heapq.heappop(self._held)[2])
            if self.running == 0 and not self._held:
                self.idle.set()
            self.kick()

    def _tick(self) -> None:
        """Every TICK seconds the credit loop looks again (expired pull requests, held
        jobs' keep-alive), busy or not: one timer for the loop's life, not one per wait."""
        self._kick.set()
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    async def _credit_loop(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)
        last_keepalive = time.monotonic()
        while True:
            try:
                await self._top_up()
            except Exception as exc:
                log.warning("pull request failed: %s", exc)
                await asyncio.sleep(0.2)
            now = time.monotonic()
            if self._held and now - last_keepalive > self._ack_wait / 3:
                last_keepalive = now
                for _, _, msg in self._held:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
            self._kick.clear()
            await self._kick.wait()

    def _free(self) -> int:
        return 0 if self._paused else self.capacity - self.running - len(self._held)

    def _missing(self, feed: PullFeed) -> int:
        """Jobs a lingering feed asks for now: what its credit lacks of the free slots, once
        that is `refill` or more or the feed holds no credit at all; else 0."""
        free = self._free()
        outstanding = feed.outstanding()
        missing = free - outstanding
        if missing >= self.refill or (missing > 0 and outstanding == 0):
            return missing
        return 0

    async def _top_up(self) -> None:
        free = self._free()
        if free <= 0:
            return
        now = time.monotonic()
        for feed in self.feeds:
            if feed.lingering:
                missing = self._missing(feed)
                if missing > 0:
                    await feed.request(missing)
        if self._held:
            return
        for feed in self.feeds:
            if not feed.lingering and feed.empty_until <= now and feed.outstanding() == 0:
                await feed.request(free)
                return
