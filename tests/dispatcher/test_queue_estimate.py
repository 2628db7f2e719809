"""The per-request queue estimate with this replica's own load (`QueueEstimator.wait_for`):
jobs it started itself take free slots off the workers' last heartbeats, so once they hold
every slot, a new job waits for one to end even with nothing queued."""

from __future__ import annotations

import time

import pytest

from llmq.dispatcher.queue_estimate import QueueEstimator
from llmq.schemas.registry import WorkerInfo


class _Local:
    """This replica's load: `queued` admitted not in the figures yet, `running` started."""

    def __init__(self, queued: int, running: int) -> None:
        self.queued, self.running = queued, running

    def new_epoch(self) -> int:
        return 0

    def counted(self, epoch: int) -> None:
        pass

    def busy(self, model: str) -> bool:
        return True

    def load(self, model: str, since: float) -> tuple[int, int]:
        return self.queued, self.running


def _estimator(queued: int, running: int) -> QueueEstimator:
    worker = WorkerInfo(
        id="w", backend="echo", models=["m"], capacity=1, heartbeat_at=time.time(),
        job_seconds={"m": 3.0},
    )  # fmt: skip
    estimator = QueueEstimator(None, lambda: [worker])  # type: ignore[arg-type]
    estimator.local = _Local(queued, running)
    return estimator


def test_own_jobs_holding_every_slot_make_a_new_one_wait() -> None:
    assert _estimator(queued=0, running=1).wait_for("m") == pytest.approx(3.0)
    assert _estimator(queued=1, running=0).wait_for("m") == pytest.approx(3.0)
    assert _estimator(queued=1, running=1).wait_for("m") == pytest.approx(6.0)
    assert _estimator(queued=0, running=0).wait_for("m") == 0.0


def test_every_slot_taken_and_nothing_queued_waits_for_one_job() -> None:
    """The workers' own heartbeats show every slot taken (the refresh's figures)."""
    busy = WorkerInfo(
        id="w", backend="echo", models=["m"], capacity=1, in_flight=1,
        heartbeat_at=time.time(), job_seconds={"m": 3.0},
    )  # fmt: skip
    estimator = QueueEstimator(None, lambda: [busy])  # type: ignore[arg-type]
    estimator._update("m", time.monotonic(), pending=0, ack_floor=0)
    assert estimator.wait_for("m") == pytest.approx(3.0)
