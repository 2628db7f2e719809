"""The circuit breaker on its own: opens after N consecutive failures, probes, goes half-open
when the backend answers, closes on a success (or a second good probe), reopens on a failure."""

from __future__ import annotations

import asyncio

from llmq.worker.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from tests.stack import wait_for


class Probe:
    def __init__(self) -> None:
        self.healthy = False
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        if self.healthy == "raise":
            raise RuntimeError("probe failed")
        return bool(self.healthy)


async def test_opens_after_threshold_consecutive_failures() -> None:
    changes: list[str] = []
    probe = Probe()
    breaker = CircuitBreaker(3, 0.05, probe, changes.append)
    breaker.record(True)
    breaker.record(True)
    breaker.record(False)  # a success resets the count
    breaker.record(True)
    breaker.record(True)
    assert breaker.state == CLOSED
    breaker.record(True)
    assert breaker.state == OPEN and changes == [OPEN]
    await asyncio.sleep(0.2)
    assert probe.calls >= 2 and breaker.state == OPEN
    await breaker.stop()


async def test_half_open_then_closed_by_a_success_or_reopened_by_a_failure() -> None:
    changes: list[str] = []
    probe = Probe()
    breaker = CircuitBreaker(1, 0.05, probe, changes.append)
    breaker.record(True)
    probe.healthy = True
    await wait_for(lambda: breaker.state == HALF_OPEN, timeout=1)
    breaker.record(True)  # the trial job failed
    assert breaker.state == OPEN
    await wait_for(lambda: breaker.state == HALF_OPEN, timeout=1)
    breaker.record(False)
    assert breaker.state == CLOSED
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]
    await breaker.stop()


async def test_idle_worker_closes_after_a_second_good_probe() -> None:
    changes: list[str] = []
    probe = Probe()
    breaker = CircuitBreaker(1, 0.05, probe, changes.append)
    breaker.record(True)
    probe.healthy = "raise"  # type: ignore[assignment]
    await asyncio.sleep(0.15)
    assert breaker.state == OPEN
    probe.healthy = True
    await wait_for(lambda: breaker.state == CLOSED, timeout=1)
    assert changes == [OPEN, HALF_OPEN, CLOSED]
    assert breaker._task is not None
    await asyncio.sleep(0.01)
    assert breaker._task.done()
    await breaker.stop()
