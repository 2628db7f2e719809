"""How long a new job of each model would wait in LLMQ_JOBS before a worker starts it.

Refreshed in the background (every `REFRESH` seconds, one JetStream request per 256
models), so admission reads a dict and never makes a NATS round trip per request. Three
figures per model:

- its queue: the consumer's `num_pending` (jobs not yet handed to a worker);
- its live capacity: free slots of the live workers taking its jobs (the registry:
  capacity - in-flight);
- its service rate: jobs started per second, from the consumer's ack floor (a worker acks
  a job when it starts answering), measured over the last `WINDOW` seconds in which the
  queue was not empty. Every api replica reads the same consumer, so they share the rate
  without a record of their own.

The wait is 0 while free slots outnumber the queue; else (queue - free slots + 1) / rate.
A model with no measured rate yet is assumed to serve capacity / job time jobs a second,
the job time being what its workers report in their heartbeats (a moving average of their
recent jobs), else the model's `max_tokens` at `queue_tokens_per_second`; with neither the
wait is unknown (None) and admission lets the job queue.

A burst arrives faster than any refresh, so each replica adds its own recent load (`local`,
the fair-share gate): requests it admitted since the refresh began (not in `num_pending`
yet) and those waiting in its fair-share lines join the queue, and its jobs that started
after the oldest heartbeat of the model's workers are taken off the free slots.
docs/routing.md explains it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names
from llmq.schemas.registry import WorkerInfo

log = logging.getLogger(__name__)

REFRESH = 0.5
"""Seconds between refreshes of the queue figures."""
WINDOW = 10.0
"""Seconds of busy queue over which the service rate is measured."""
LIVE_TTL = 0.05
"""Seconds a model's view of its live workers is reused by the per-request estimate."""
_LIVE_VIEWS = 4096
_TIMEOUT = 2.0
_PAGE = 256


@dataclass(slots=True)
class QueueEstimate:
    """One model's queue as admission sees it."""

    model: str
    pending: int = 0
    free_slots: int = 0
    rate: float | None = None
    """Jobs started per second while the queue was busy; None until measured."""
    assumed: float | None = None
    """The rate assumed from the job time while none is measured (None: no job time)."""
    wait: float | None = 0.0
    """Estimated seconds before a new job starts; None when unknown."""
    samples: deque[tuple[float, int, bool]] = field(default_factory=deque)
    """(monotonic time, ack floor, queue was busy) of the recent refreshes."""


def _rate(samples: deque[tuple[float, int, bool]]) -> float | None:
    """Acks per second over the intervals that began with a busy queue."""
    busy_time = 0.0
    acked = 0
    previous: tuple[float, int, bool] | None = None
    for sample in samples:
        if previous is not None and previous[2]:
            busy_time += sample[0] - previous[0]
            acked += max(0, sample[1] - previous[1])
        previous = sample
    if busy_time < REFRESH * 2 or acked == 0:
        return None
    return acked / busy_time


def estimate_wait(pending: int, free_slots: int, rate: float | None) -> float | None:
    """Seconds a job queued now waits for a worker (see the module's docstring): with every
    slot taken and nothing queued, until one job ends; 0 while that time is unknown."""
    if pending < free_slots:
        return 0.0
    if rate is None or rate <= 0:
        return 0.0 if pending == 0 else None
    return (pending - free_slots + 1) / rate


def free_slots(workers: Iterable[WorkerInfo], model: str) -> int:
    """Free job slots of the live workers taking `model`'s jobs (circuit not open)."""
    return sum(max(0, w.capacity - w.in_flight) for w in workers if takes(w, model))


def takes(worker: WorkerInfo, model: str) -> bool:
    """The worker takes `model`'s jobs now (not draining, circuit not open)."""
    return model in worker.models and not worker.draining and worker.circuit != "open"


def assumed_rate(
    workers: Iterable[WorkerInfo], model: str, job_seconds: float | None = None
) -> float | None:
    """Jobs a second the model's workers serve by their reported job time (`job_seconds`
    for a worker that reports none); None when no worker's job time is known."""
    rate = 0.0
    for worker in workers:
        if takes(worker, model):
            seconds = worker.job_seconds.get(model) or job_seconds
            if seconds:
                rate += worker.capacity / seconds
    return rate or None


class LocalLoad(Protocol):
    """This replica's own recent load of each model (the fair-share gate keeps it)."""

    def new_epoch(self) -> int:
        """A refresh begins; what is admitted from now on is counted in the next epoch."""

    def counted(self, epoch: int) -> None:
        """The refresh begun at `epoch` succeeded: what came before it is in its figures."""

    def busy(self, model: str) -> bool:
        """Anything of `model` admitted, waiting or started here lately (cheap: no load,
        no look at the workers, when not)."""

    def load(self, model: str, since: float) -> tuple[int, int]:
        """(requests admitted or waiting here and not in the queue figures yet, jobs of
        this replica running that started after `since`, unix seconds)."""


class QueueEstimator:
    def __init__(
        self,
        js: JetStreamContext,
        workers: Callable[[], Iterable[WorkerInfo]],
        job_seconds: Callable[[str], float | None] | None = None,
    ) -> None:
        """`workers`: the live workers now (the api's registry view, or a snapshot);
        `job_seconds(model)`: the job time assumed for a model whose workers report none."""
        self._js = js
        self._workers = workers
        self._job_seconds = job_seconds
        self.local: LocalLoad | None = None
        """This replica's own load (`fair_share.FairShare`), added to the figures."""
        self.models: dict[str, QueueEstimate] = {}
        self._live_views: dict[str, tuple[float, tuple[int, float, float | None]]] = {}
        self.refreshed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def wait_for(self, model: str) -> float | None:
        """The model's estimated wait in seconds, this replica's own recent load included
        (0 for a model without a queue)."""
        state = self.models.get(model)
        base = state.wait if state is not None else 0.0
        if self.local is None or not self.local.busy(model):
            return base
        free, oldest, assumed = self._live(model)
        queued, running = self.local.load(model, oldest)
        if not queued and not running:
            return base
        rate = state.rate if state is not None else None
        return estimate_wait(
            (state.pending if state else 0) + queued, max(0, free - running), rate or assumed
        )

    def _live(self, model: str) -> tuple[int, float, float | None]:
        """The model's free slots, oldest heartbeat and assumed rate from the live workers,
        looked at once per `LIVE_TTL` (heartbeats come every few seconds)."""
        now = time.monotonic()
        cached = self._live_views.get(model)
        if cached is not None and now - cached[0] < LIVE_TTL:
            return cached[1]
        workers = [w for w in self._workers() if takes(w, model)]
        oldest = min((w.heartbeat_at for w in workers), default=0.0)
        view = (
            free_slots(workers, model),
            oldest,
            assumed_rate(workers, model, self._assumed_seconds(model)),
        )
        if len(self._live_views) > _LIVE_VIEWS:
            self._live_views.clear()
        self._live_views[model] = (now, view)
        return view

    def _assumed_seconds(self, model: str) -> float | None:
        return self._job_seconds(model) if self._job_seconds is not None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="queue-estimate")

    async def stop(self) -> None:
        """Cancelled until it ends: nats-py can lose one cancel (`tasks.stop_task`)."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(_TIMEOUT):
                    await self.refresh()
            except Exception as exc:  # NATS away: keep the last figures
                log.debug("queue estimate not refreshed: %s", exc)
            await asyncio.sleep(REFRESH)

    async def refresh(self) -> None:
        now = time.monotonic()
        epoch = self.local.new_epoch() if self.local is not None else 0
        seen: set[str] = set()
        offset = 0
        while True:
            try:
                page = await self._js.consumers_info(names.JOBS_STREAM, offset=offset or None)
            except NotFoundError:
                break
            for info in page:
                if not info.name.startswith("jobs-"):
                    continue
                try:
                    model = names.unescape_model(info.name[len("jobs-") :])
                except (ValueError, UnicodeDecodeError):
                    continue
                floor = info.ack_floor.consumer_seq if info.ack_floor else 0
                self._update(model, now, info.num_pending or 0, floor or 0)
                seen.add(model)
            if len(page) < _PAGE:
                break
            offset += len(page)
        for gone in set(self.models) - seen:
            del self.models[gone]
        self.refreshed_at = now
        if self.local is not None:
            self.local.counted(epoch)

    def _update(self, model: str, now: float, pending: int, ack_floor: int) -> None:
        state = self.models.get(model)
        if state is None:
            state = self.models[model] = QueueEstimate(model)
        state.samples.append((now, ack_floor, pending > 0))
        while state.samples and now - state.samples[0][0] > WINDOW:
            state.samples.popleft()
        measured = _rate(state.samples)
        if measured is not None:
            state.rate = measured
        state.pending = pending
        workers = list(self._workers())
        state.free_slots = free_slots(workers, model)
        state.assumed = assumed_rate(workers, model, self._assumed_seconds(model))
        state.wait = estimate_wait(pending, state.free_slots, state.rate or state.assumed)
