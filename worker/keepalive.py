"""One keep-alive loop per worker process for all its running jobs.

A task and a timer per job woke every job twice a second, even a stream whose chunks already
told the api it was alive. Here one loop wakes every half ping interval and pings only the
jobs that sent no frame (a chunk counts) for a whole interval: the api hears from every job
at least every 1.5 intervals, well inside its 3-interval silence bound (docs/protocol.md,
"Deadlines"), and a stream sending a token a second at the default 1 s interval needs no ping
at all. A job not
acked yet is also marked in progress, so JetStream keeps it ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from llmq.worker.replies import FrameSender


class Ackable(Protocol):
    """The runner's once-only ack of a job's message (`runner._Ack`)."""

    done: bool

    async def in_progress(self) -> None: ...


class KeepAlive:
    """The running jobs' senders, pinged by one loop that runs while any job does."""

    def __init__(self, ping_interval: float) -> None:
        self.ping_interval = ping_interval
        self._jobs: dict[FrameSender, Ackable] = {}
        self._task: asyncio.Task[None] | None = None
        self.pings_sent = 0
        """For tests and benchmarks: pings this loop sent."""

    def add(self, sender: FrameSender, ack: Ackable) -> None:
        self._jobs[sender] = ack
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def remove(self, sender: FrameSender) -> None:
        self._jobs.pop(sender, None)

    def __len__(self) -> int:
        return len(self._jobs)

    async def _loop(self) -> None:
        try:
            while self._jobs:
                await asyncio.sleep(self.ping_interval / 2)
                await self._tick()
        finally:
            self._task = None  # no await between the empty check and this: `add` restarts it

    async def _tick(self) -> None:
        silent_since = time.monotonic() - self.ping_interval
        for sender, ack in list(self._jobs.items()):
            if sender not in self._jobs:
                continue  # the job ended while an earlier ping was written
            if sender.last_sent <= silent_since:
                self.pings_sent += 1
                with contextlib.suppress(Exception):
                    await sender.ping()
            if not ack.done:
                await ack.in_progress()
