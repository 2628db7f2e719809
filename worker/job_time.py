"""How long this worker's jobs of each model take lately, announced in its heartbeat
(`WorkerInfo.job_seconds`): the api's queue estimate of a model whose service rate it has
not measured yet (a cold model) assumes capacity / job time jobs a second."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from llmq.schemas import names
from llmq.worker.runner import JobOutcome

WEIGHT: Final = 0.2
"""Weight of the newest job in the moving average."""


class JobTimes:
    def __init__(self, models: Iterable[str]) -> None:
        self._models = frozenset(models)
        self.seconds: dict[str, float] = {}
        """model -> moving average of its interactive jobs' run time (started to ended)."""

    def record(self, outcome: JobOutcome, stream: str, _label: str) -> None:
        """A `JobBook` listener: jobs that ran to an answer count, interactive ones only
        (batch jobs wait for free slots and say nothing of the interactive queue)."""
        model = outcome.job.model
        if (
            outcome.outcome != "ok"
            or stream != names.JOBS_STREAM
            or model not in self._models
            or not outcome.started
            or outcome.ended < outcome.started
        ):
            return
        took = outcome.ended - outcome.started
        last = self.seconds.get(model)
        self.seconds[model] = took if last is None else last + (took - last) * WEIGHT
