"""The job envelope: headers exactly as docs/protocol.md spells them, read back the same, and
missing headers (an older api) read as their defaults."""

from __future__ import annotations

import msgspec
import pytest

from llmq.schemas import names
from llmq.schemas.envelope import (
    JOB_KINDS,
    REQUEST_DECODERS,
    EnvelopeError,
    JobEnvelope,
    JobKind,
    decode_request,
)
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_headers_on_the_wire() -> None:
    job = JobEnvelope(
        id="abc",
        model="gpt-4.1",
        tenant="acme",
        reply="_INBOX.i.abc",
        deadline_ms=1_700_000_000_123,
    )
    assert job.to_headers() == {
        "Llmq-Job": "abc",
        "Llmq-Tenant": "acme",
        "Llmq-Reply": "_INBOX.i.abc",
        "Llmq-Deadline": "1700000000123",
        "Nats-Msg-Id": "abc",
    }
    assert job.subject == "llmq.jobs.gpt-4%2E1"
    assert job.stream == names.JOBS_STREAM
    other = msgspec.structs.replace(
        job, kind="embedding", traceparent=TRACE, batch=True, msg_id="abc-2"
    )
    headers = other.to_headers()
    assert headers["Llmq-Kind"] == "embedding"
    assert headers["traceparent"] == TRACE
    assert headers["Nats-Msg-Id"] == "abc-2"
    assert other.subject == "llmq.batch.gpt-4%2E1"
    assert other.stream == names.BATCH_STREAM


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("kind", JOB_KINDS)
def test_round_trip(kind: JobKind, batch: bool) -> None:
    job = JobEnvelope(
        id="j1",
        model="llama3:8b",
        tenant="t",
        kind=kind,
        reply="r",
        deadline_ms=42,
        batch=batch,
        traceparent=TRACE,
    )
    assert JobEnvelope.from_headers(job.subject, job.to_headers()) == job


def test_missing_headers_decode_to_defaults() -> None:
    job = JobEnvelope.from_headers(names.jobs_subject("m"), {names.H_JOB: "j"})
    assert job == JobEnvelope(id="j", model="m")
    assert (job.kind, job.deadline_ms, job.deadline, job.traceparent) == ("chat", 0, 0.0, None)
    assert JobEnvelope.from_headers(names.jobs_subject("m"), None).id == ""
    bad_deadline = {names.H_JOB: "j", names.H_DEADLINE: "soon"}
    assert JobEnvelope.from_headers(names.jobs_subject("m"), bad_deadline).deadline_ms == 0


def test_the_subject_says_stream_and_model() -> None:
    jobs = JobEnvelope.from_headers(names.jobs_subject("gpt-4.1"), {})
    assert (jobs.stream, jobs.model) == (names.JOBS_STREAM, "gpt-4.1")
    batch = JobEnvelope.from_headers(names.batch_subject("llama3:8b"), {})
    assert (batch.stream, batch.model) == (names.BATCH_STREAM, "llama3:8b")


def test_an_unknown_kind_is_refused_with_its_reply_subject() -> None:
    headers = {names.H_JOB: "j", names.H_REPLY: "r", names.H_KIND: "responses"}
    with pytest.raises(EnvelopeError) as caught:
        JobEnvelope.from_headers(names.jobs_subject("m"), headers)
    assert caught.value.reply == "r"


def test_one_decoder_per_kind() -> None:
    assert set(REQUEST_DECODERS) == set(JOB_KINDS) - {"endpoint"}  # its body is bytes
    chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert isinstance(decode_request("chat", chat), ChatCompletionRequest)
    assert isinstance(
        decode_request("completion", b'{"model": "m", "prompt": "x"}'), CompletionRequest
    )
    assert isinstance(
        decode_request("embedding", b'{"model": "m", "input": "x"}'), EmbeddingRequest
    )
