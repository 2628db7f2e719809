"""The scheduler's pull credit against a real nats-server and a real durable consumer: never
more credit than free slots, never a job left queued while slots are free, and at a steady
rate one pull request per `capacity // REFILL` jobs instead of one per job."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StreamConfig

from llmq.embedded import EmbeddedNats
from llmq.worker.feed import PullFeed
from llmq.worker.scheduler import REFILL, Scheduler


@dataclass
class Jobs:
    """Runs each job until the test lets it finish; notes the most credit ever held beyond
    the free slots."""

    scheduler: Scheduler | None = None
    feed: PullFeed | None = None
    started: list[bytes] = field(default_factory=list)
    release: dict[bytes, asyncio.Event] = field(default_factory=dict)
    worst_excess: int = 0
    requests: int = 0

    async def run(self, msg: Msg) -> None:
        self.started.append(msg.data)
        event = self.release.setdefault(msg.data, asyncio.Event())
        await msg.ack()
        await event.wait()

    def check(self) -> None:
        assert self.scheduler is not None and self.feed is not None
        s = self.scheduler
        free = s.capacity - s.running - s.held
        self.worst_excess = max(self.worst_excess, self.feed.outstanding() - free)


@pytest.fixture
async def setup(nats_server: EmbeddedNats) -> AsyncIterator[Callable[..., object]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = "SCHED_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="d", ack_policy="explicit"))
    made: list[tuple[Scheduler, PullFeed]] = []

    async def make(capacity: int) -> tuple[Client, str, Jobs]:
        jobs = Jobs()
        scheduler = Scheduler(capacity, jobs.run, ack_wait=30)
        feed = PullFeed(
            nc, name, "d", priority=0, lingering=True, expires=5.0,
            on_job=scheduler.on_job, on_change=scheduler.kick,
        )  # fmt: skip
        asked = feed.request

        async def counted(n: int) -> None:
            jobs.requests += 1
            await asked(n)

        feed.request = counted  # type: ignore[method-assign]
        jobs.scheduler, jobs.feed = scheduler, feed
        await feed.start()
        scheduler.feeds = [feed]
        scheduler.start()
        made.append((scheduler, feed))
        return nc, name, jobs

    yield make
    for scheduler, feed in made:
        scheduler.cancel_all()
        await scheduler.stop()
        await feed.stop()
    await js.delete_stream(name)
    await nc.close()


async def _until(predicate: Callable[[], bool], jobs: Jobs, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        jobs.check()
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_one_pull_request_per_eighth_of_capacity_at_a_steady_rate(setup) -> None:  # type: ignore[no-untyped-def]
    capacity = 64
    nc, name, jobs = await setup(capacity)
    await _until(lambda: jobs.feed is not None and jobs.feed.outstanding() == capacity, jobs)
    first = jobs.requests
    for i in range(64):  # one job at a time, each done before the next: concurrency 1
        data = b"%d" % i
        await nc.jetstream().publish(f"{name}.a", data)
        await _until(lambda data=data: data in jobs.started, jobs)  # type: ignore[misc]
        jobs.release.setdefault(data, asyncio.Event()).set()
        await _until(lambda: jobs.scheduler is not None and jobs.scheduler.running == 0, jobs)
    await asyncio.sleep(0.05)
    jobs.check()
    assert jobs.requests - first <= 64 // (capacity // REFILL) + 1
    assert jobs.worst_excess <= 0  # never more credit than free slots


async def test_every_queued_job_starts_while_slots_are_free(setup) -> None:  # type: ignore[no-untyped-def]
    """A burst larger than the capacity: all run, never more than `capacity` at once, and the
    ones queued behind start as slots free up, though credit is topped up by eighths."""
    capacity = 16
    nc, name, jobs = await setup(capacity)
    js = nc.jetstream()
    for i in range(40):
        await js.publish(f"{name}.a", b"%d" % i)
    await _until(lambda: len(jobs.started) == capacity, jobs)
    await asyncio.sleep(0.1)
    assert len(jobs.started) == capacity  # full: nothing more taken
    for round_ in range(3):  # free a few slots at a time; each is filled from the queue
        for data in jobs.started[round_ * 5 : round_ * 5 + 5]:
            jobs.release.setdefault(data, asyncio.Event()).set()
        await _until(lambda n=capacity + 5 * (round_ + 1): len(jobs.started) == n, jobs)  # type: ignore[misc]
    for data in list(jobs.started):
        jobs.release.setdefault(data, asyncio.Event()).set()
    await _until(lambda: len(jobs.started) == 40, jobs)
    for data in jobs.started:
        jobs.release.setdefault(data, asyncio.Event()).set()
    assert jobs.worst_excess <= 0
    assert jobs.scheduler is not None and jobs.scheduler.peak <= capacity
