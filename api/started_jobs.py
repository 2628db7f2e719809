"""This replica's started jobs of each model, next to what the workers' heartbeats show
(the fair share's fast path, `api/fair_share.py`; the queue estimate's own load).

A heartbeat (every 2 s) shows a worker's in-flight jobs when it was sent: a job started
after it holds a slot the heartbeat does not show (`running`: taken off the free slots),
and a job that was in flight at it and has ended since holds none any more (`freed`: given
back to them). Without the second count, a busy model's free slots look taken twice for up
to a heartbeat (once by the jobs in the heartbeat that ended, once by those that replaced
them), and its requests leave the fast path for the shared counts in Redis although the
model has room.

A job counts as freed only when this replica saw it start before the oldest heartbeat of
the model's workers and end after the newest, each by `MARGIN`: it was in flight at every
heartbeat, its own worker's included (the worker counts it from before it says `accepted`
until after its `done`), whichever worker ran it; the margin covers that order and the
clocks' skew. A new heartbeat starts the count again, and it never exceeds the in-flight
jobs the heartbeats show.
"""

from __future__ import annotations

import time
from typing import Final, NamedTuple

SEEN_STARTING: Final = 30.0
"""Seconds a started job counts against the free slots at most (a heartbeat older than
this is a dead worker's)."""
MARGIN: Final = 0.005
"""Seconds a job must have started before a heartbeat, and ended after it, to count as
in flight at it: more than a `done` frame takes to reach the api (the worker counts a job
until a little after it sends it) and than two hosts' clocks differ. Short: a job of a busy
model that was in flight at a heartbeat ends within milliseconds of it."""


class LiveRoom(NamedTuple):
    """A model's slots as its live workers' heartbeats show them."""

    free: int
    """Free slots (none while the queue estimate shows a wait, or no worker)."""
    oldest: float
    """time.time() of the oldest heartbeat they come from."""
    newest: float
    """...and of the newest."""
    busy: int
    """Slots in flight in them."""


NO_ROOM: Final = LiveRoom(0, 0.0, 0.0, 0)


class StartedJobs:
    """Per model: this replica's jobs started and still running, and those freed since the
    heartbeats (the module's docstring)."""

    __slots__ = ("_freed", "_seen", "_started")

    def __init__(self) -> None:
        self._started: dict[str, dict[int, float]] = {}
        """model -> time.time() its jobs here started (oldest first), for those still running
        that started after the oldest heartbeat."""
        self._freed: dict[str, tuple[LiveRoom, int]] = {}
        """model -> (the heartbeats last looked at, jobs freed since)."""
        self._seen = 0

    def __contains__(self, model: str) -> bool:
        return model in self._started

    def start(self, model: str) -> int:
        """A job of `model` started now: its mark, for `end`."""
        now = time.time()
        started = self._started.setdefault(model, {})
        self._seen = seen = self._seen + 1
        started[seen] = now
        while (first := next(iter(started.items())))[1] < now - SEEN_STARTING:
            del started[first[0]]
        return seen

    def end(self, model: str, seen: int) -> None:
        """The job marked `seen` ended: its slot is free again."""
        started = self._started.get(model)
        at = started.pop(seen, None) if started is not None else None
        if started is not None and not started:
            del self._started[model]
        freed = self._freed.get(model)
        if freed is None:
            return
        room, count = freed
        # `at` None: dropped by `running` (it started before an oldest heartbeat) or too old
        if (at is None or at < room.oldest - MARGIN) and time.time() > room.newest + MARGIN:
            self._freed[model] = (room, count + 1)

    def running(self, model: str, room: LiveRoom) -> int:
        """Jobs of `model` that hold a slot `room` does not show (started after its oldest
        heartbeat), less those it shows that have ended since (never below what it shows)."""
        freed = self._freed.get(model)
        if freed is None or (freed[0].oldest, freed[0].newest) != (room.oldest, room.newest):
            freed = (room, 0)
        self._freed[model] = (room, freed[1])
        return self._running_since(model, room.oldest) - min(freed[1], room.busy)

    def running_since(self, model: str, oldest: float) -> int:
        """`running` for the queue estimate, which knows the oldest heartbeat only: the jobs
        freed count when it is the one `running` last saw."""
        freed = self._freed.get(model)
        gone = min(freed[1], freed[0].busy) if freed and freed[0].oldest == oldest else 0
        return self._running_since(model, oldest) - gone

    def _running_since(self, model: str, oldest: float) -> int:
        started = self._started.get(model)
        if not started:
            return 0
        while started and (first := next(iter(started.items())))[1] < oldest:
            del started[first[0]]  # in the heartbeats' in-flight counts by now
        if not started:
            del self._started[model]
        return len(started)
