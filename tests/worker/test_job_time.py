"""The job time a worker announces (`WorkerInfo.job_seconds`): a moving average of its
interactive jobs that ran to an answer, per model."""

from __future__ import annotations

import pytest

from llmq.schemas import names
from llmq.schemas.envelope import JobEnvelope
from llmq.worker.job_time import WEIGHT, JobTimes
from llmq.worker.runner import JobOutcome


def _ran(model: str, seconds: float, outcome: str = "ok", batch: bool = False) -> JobOutcome:
    job = JobEnvelope(id="j", model=model, batch=batch)
    return JobOutcome(job, outcome, started=100.0, ended=100.0 + seconds)


def test_only_interactive_jobs_that_ran_to_an_answer_count() -> None:
    times = JobTimes(["m"])
    times.record(_ran("m", 3.0), names.JOBS_STREAM, "m")
    assert times.seconds == {"m": 3.0}
    times.record(_ran("m", 1.0), names.JOBS_STREAM, "m")
    assert times.seconds["m"] == pytest.approx(3.0 - 2.0 * WEIGHT)
    before = dict(times.seconds)
    times.record(_ran("m", 60.0, "upstream_error"), names.JOBS_STREAM, "m")
    times.record(_ran("m", 60.0, batch=True), names.BATCH_STREAM, "m")
    times.record(_ran("other", 60.0), names.JOBS_STREAM, "other")
    assert times.seconds == before
