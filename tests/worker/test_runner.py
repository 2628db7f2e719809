"""The runner reads each job through its envelope: an expired job is dropped with an outcome
that says which job (stream and model) it was, and a kind this worker does not know is
failed at once, never run as chat."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from llmq.schemas import frames, names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Failed, frame_decoder
from llmq.worker.runner import JobOutcome, JobRunner


class FakeNats:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append((subject, data, headers))


class FakeMsg:
    def __init__(self, subject: str, headers: dict[str, str], data: bytes = b"{}") -> None:
        self.subject = subject
        self.headers = headers
        self.data = data
        self.reply = ""
        self.terminated = False

    async def term(self) -> None:
        self.terminated = True

    async def ack(self) -> None:
        pass


def runner(nc: FakeNats, outcomes: list[JobOutcome], tracked: list[JobEnvelope]) -> JobRunner:
    @contextlib.contextmanager
    def track(job: JobEnvelope) -> Iterator[None]:
        tracked.append(job)
        yield

    backend: Any = None
    return JobRunner(nc, backend, "w1", {}, 1.0, 3, outcomes.append, track)  # type: ignore[arg-type]


async def test_an_expired_job_is_dropped_with_its_envelope() -> None:
    nc, outcomes, tracked = FakeNats(), list[JobOutcome](), list[JobEnvelope]()
    job = JobEnvelope(
        id="j1",
        model="m:1",
        tenant="t",
        reply="r",
        deadline_ms=int(time.time() * 1000) - 1,
        batch=True,
    )
    msg = FakeMsg(job.subject, job.to_headers())
    await runner(nc, outcomes, tracked).run(msg)  # type: ignore[arg-type]
    assert msg.terminated
    assert [(o.job, o.outcome) for o in outcomes] == [(job, "expired")]
    assert outcomes[0].job.stream == names.BATCH_STREAM
    assert tracked == [job]
    assert nc.sent == []


async def test_an_unknown_kind_is_failed_not_run() -> None:
    nc, outcomes, tracked = FakeNats(), list[JobOutcome](), list[JobEnvelope]()
    headers = {names.H_JOB: "j2", names.H_REPLY: "r2", names.H_KIND: "responses"}
    msg = FakeMsg(names.jobs_subject("m"), headers)
    await runner(nc, outcomes, tracked).run(msg)  # type: ignore[arg-type]
    assert msg.terminated
    assert (outcomes, tracked) == ([], [])
    [(subject, data, sent_headers)] = nc.sent
    assert (subject, sent_headers[names.H_FRAME]) == ("r2", frames.ERROR)
    frame = frame_decoder.decode(data)
    assert isinstance(frame, Failed)
    assert (frame.status, frame.error.code) == (400, "unsupported_kind")


async def test_a_job_without_reply_subject_is_terminated_quietly() -> None:
    nc, outcomes, tracked = FakeNats(), list[JobOutcome](), list[JobEnvelope]()
    msg = FakeMsg(names.jobs_subject("m"), {names.H_JOB: "j3"})
    await runner(nc, outcomes, tracked).run(msg)  # type: ignore[arg-type]
    assert msg.terminated
    assert (nc.sent, outcomes, tracked) == ([], [], [])
