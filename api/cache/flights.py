"""Running jobs that identical requests join (docs/cache.md).

A cacheable job is read by its `Flight`'s own task, not by its client: each request that
follows it (the first one and every one that joined) reads the flight's frames from the
start, out of a buffer, then live. A follower that leaves does not stop the job while
another still follows it; the last one to leave cancels it. The buffer is bounded
(`cache_join_buffer_bytes`): past it no request joins any more; past the largest cached answer
as well, frames every follower has read are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.frames import Done, Failed

Event = bytes | Done | Failed
OnEnd = Callable[["Flight"], Awaitable[None]]


class Flight:
    """One running job and the requests following it."""

    def __init__(self, key: tuple[str, bool], limits: tuple[int, int], on_end: OnEnd) -> None:
        """Claimed by the request that missed; `start` gives it its job. `limits`: bytes of
        frames up to which a request may join, and that are kept."""
        self.run: JobRun | None = None
        self.started = asyncio.Event()
        """Set when the job is queued (`start`) or will never be (`abandon`)."""
        self.key = key
        self.join_limit, self.keep_limit = limits
        self.on_end = on_end
        self.events: list[Event] = []
        self.base = 0
        """Index of `events[0]` among every event of the job (earlier ones were dropped)."""
        self.size = 0
        self.joinable = True
        self.ended = False
        self.joined = 0
        """Requests that joined after the first."""
        self._positions: dict[int, int] = {}
        self._next_follower = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, run: JobRun) -> None:
        self.run = run
        self.started.set()

    def abandon(self) -> None:
        """The claiming request ended without queueing its job: whoever waits runs its own."""
        if self.run is None:
            self.ended = True
            self.joinable = False
            self.started.set()
            self.on_end_sync()

    def on_end_sync(self) -> None:
        """Replaced by `Flights.claim`: forget the flight."""

    @property
    def last(self) -> Event | None:
        return self.events[-1] if self.events else None

    def follow(self) -> AsyncGenerator[Event, None]:
        """The job's events from its first; the follower counts from this call."""
        follower = self._next_follower
        self._next_follower += 1
        self._positions[follower] = self.base
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="cache-flight")
        return self._read(follower)

    async def _read(self, follower: int) -> AsyncGenerator[Event, None]:
        try:
            while True:
                at = self._positions[follower] - self.base
                if at < len(self.events):
                    self._positions[follower] += 1
                    ev = self.events[at]
                    yield ev
                    if not isinstance(ev, bytes):
                        return
                    continue
                if self.ended:
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        finally:
            del self._positions[follower]
            if not self._positions and not self.ended and self._task is not None:
                self._task.cancel()  # nobody follows: the job stops (its events' close)

    async def _pump(self) -> None:
        assert self.run is not None
        events = self.run.events()
        try:
            async for ev in events:
                self._add(ev)
        except asyncio.CancelledError:
            pass
        finally:
            self.ended = True
            self.joinable = False
            self._wake()
            with contextlib.suppress(Exception):
                await events.aclose()
            await self.on_end(self)

    def _add(self, ev: Event) -> None:
        self.events.append(ev)
        if isinstance(ev, bytes):
            self.size += len(ev)
            if self.size > self.join_limit:
                self.joinable = False
            if self.size > self.keep_limit:
                self._trim()
        self._wake()

    def _trim(self) -> None:
        """Drop the frames every follower has read (nobody joins any more)."""
        if not self._positions:
            return
        done = min(self._positions.values()) - self.base
        if done > 0:
            del self.events[:done]
            self.base += done

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class FollowedRun:
    """What a `QueuedJob` reads: the flight's events instead of the job's own, the job's
    state otherwise."""

    def __init__(self, flight: Flight) -> None:
        self._flight = flight

    def events(self) -> AsyncGenerator[Event, None]:
        return self._flight.follow()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._flight.run, name)

    @property
    def flight(self) -> Flight:
        return self._flight

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_flight":
            object.__setattr__(self, name, value)
        else:
            setattr(self._flight.run, name, value)


class Flights:
    """The joinable flights of this api process, by (cache key, streamed)."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, bool], Flight] = {}

    def find(self, key: tuple[str, bool]) -> Flight | None:
        flight = self.open.get(key)
        if flight is None or not flight.joinable or flight.ended:
            return None
        return flight

    def claim(self, key: tuple[str, bool], limits: tuple[int, int], on_end: OnEnd) -> Flight:
        """A flight for the request that missed, joinable at once: requests identical to
        it that come while it is still on its way to the queue wait for its job. Abandoned
        when the claiming task ends without queueing one (refused, failed, cancelled)."""

        def forget() -> None:
            if self.open.get(key) is flight:
                del self.open[key]

        async def ended(flight: Flight) -> None:
            forget()
            await on_end(flight)

        flight = self.open[key] = Flight(key, limits, ended)
        flight.on_end_sync = forget  # type: ignore[method-assign]
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _task: flight.abandon())
        return flight
