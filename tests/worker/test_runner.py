"""The runner reads each job through its envelope: an expired job is dropped with an outcome
that says which job (stream and model) it was, and a kind this worker does not know is
failed at once, never run as chat. A non-streamed job's body is the one its backend built,
or the fold of the chunks a backend gave anyway."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llmq.schemas import frames, names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done, Failed, frame_decoder
from llmq.schemas.openai import Usage
from llmq.worker.backends.base import BackendConfig, Call, Out, ReplyTo
from llmq.worker.backends.echo import EchoBackend
from llmq.worker.chunks import ChatChunks
from llmq.worker.runner import JobOutcome, JobRunner
from tests.spec import assert_valid


class FakeNats:
    is_connected = True
    pending_data_size = 0  # nothing ever waits to be sent (`worker.outbound`)

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
    return JobRunner(
        nc, backend, "w1", {}, 1.0, max_deliver=3, on_outcome=outcomes.append, track=track
    )  # type: ignore[arg-type]


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


class ChunksOnly:
    """A backend written before `ReplyTo.whole`: it yields stream chunks even when the runner
    asks for a whole reply."""

    kinds = frozenset({"chat"})

    def chat(self, call: Call) -> AsyncIterator[Out]:
        return self._outs(call)

    async def _outs(self, call: Call) -> AsyncIterator[Out]:
        reply = call.reply
        chunks = ChatChunks(ReplyTo(reply.id, reply.model, reply.created))  # whole ignored
        yield chunks.delta(0, content="folded")
        yield chunks.finish(0, "stop")
        yield chunks.end(Usage(1, 1, 2), "stop")


@pytest.mark.parametrize(
    ("backend", "content"),
    [(EchoBackend(BackendConfig()), "hello there"), (ChunksOnly(), "folded")],
)
async def test_a_whole_reply_is_the_backends_body_or_its_chunks_folded(
    backend: Any, content: str
) -> None:
    nc, outcomes = FakeNats(), list[JobOutcome]()
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    headers = {names.H_JOB: "j4", names.H_REPLY: "r4"}
    msg = FakeMsg(names.jobs_subject("m"), headers, json.dumps(body).encode())
    await JobRunner(nc, backend, "w1", {}, 1.0, max_deliver=3, on_outcome=outcomes.append).run(msg)  # type: ignore[arg-type]
    [done] = [data for _, data, sent in nc.sent if sent.get(names.H_FRAME) == frames.DONE]
    frame = frame_decoder.decode(done)
    assert isinstance(frame, Done) and frame.body is not None
    whole = json.loads(bytes(frame.body))
    assert_valid("CreateChatCompletionResponse", whole)
    assert whole["id"] == "chatcmpl-j4" and whole["model"] == "m"
    assert whole["choices"][0]["message"]["content"] == content
    assert [o.outcome for o in outcomes] == ["ok"] and outcomes[0].first_token is not None


def test_the_delivery_count_is_read_as_nats_py_reads_it() -> None:
    """`delivered` parses only the count from the ack subject; nats-py's Metadata agrees for
    both forms of it, a core message counts 1, anything else raises nats-py's error."""
    from nats.aio.msg import Msg
    from nats.errors import NotJSMessageError

    from llmq.worker.delivery import delivered

    replies = [
        "$JS.ACK.LLMQ_JOBS.jobs-bench.3.17.12.1764337000000000000.5",
        "$JS.ACK.hub.ACCHASH.LLMQ_JOBS.jobs-bench.2.17.12.1764337000000000000.0.tok",
        "$JS.ACK._.ACCHASH.LLMQ_JOBS.jobs-bench.4.17.12.1764337000000000000.0",
    ]
    for reply in replies:
        msg = Msg(None, subject="llmq.jobs.bench", reply=reply)  # type: ignore[arg-type]
        assert delivered(msg) == msg.metadata.num_delivered > 1
    assert delivered(Msg(None, subject="s", reply="")) == 1  # type: ignore[arg-type]
    with pytest.raises(NotJSMessageError):
        delivered(Msg(None, subject="s", reply="_INBOX.abc.def"))  # type: ignore[arg-type]
