"""Ids, tenant tokens, outcome subjects, webhook signatures and job settling."""

from __future__ import annotations

import time

import pytest

from llmq.dispatcher.batch.collector import parse_outcome_subject, results_key
from llmq.dispatcher.batch.records import (
    JobRecord,
    Unrun,
    line_job_id,
    settle_job,
    split_line_job_id,
    strip_prefix,
    time_hex,
)
from llmq.schemas import names
from llmq.schemas.frames import Done, failure
from llmq.schemas.openai import Usage


def test_ids_are_time_ordered_hex() -> None:
    first = time_hex()
    time.sleep(0.002)
    second = time_hex()
    assert len(first) == 32 and first < second
    assert strip_prefix("job_" + first, "job_") == first
    assert strip_prefix("job_xyz", "job_") is None
    assert strip_prefix("batch_" + first, "job_") is None
    assert split_line_job_id(line_job_id(first, 12)) == (first, 12)
    assert split_line_job_id(first) is None
    assert results_key(first) == f"job.{first}"
    assert results_key(line_job_id(first, 3)) == f"line.{first}.3"


@pytest.mark.parametrize("tenant", ["", "acme", "a.b@c-d_e", "Ünï"])
def test_tenant_tokens_round_trip_and_outcome_subjects(tenant: str) -> None:
    token = names.tenant_token(tenant)
    assert "." not in token and "%" not in token and token
    assert names.tenant_from_token(token) == tenant
    subject = names.outcome_subject(tenant, "gpt-4.1", "abc-1")
    assert parse_outcome_subject(subject) == (tenant, "gpt-4.1", "abc-1")


def test_parse_outcome_subject_rejects_others() -> None:
    assert parse_outcome_subject("_INBOX.x.y") is None
    assert parse_outcome_subject("llmq.outcome.a.b") is None


def test_settle_job() -> None:
    record = JobRecord(id="x", tenant="", model="m", created_at=1.0, expires_at=2.0)
    done = settle_job(record, Done(usage=Usage(1, 2, 3)), now=5.0)
    assert done.status == "completed" and done.usage == Usage(1, 2, 3) and done.ended_at == 5.0
    failed = settle_job(record, failure(502, "boom", "upstream_error", "x"), now=5.0)
    assert failed.status == "failed" and failed.status_code == 502
    assert failed.error is not None and failed.error["message"] == "boom"
    for code, status in (
        ("job_cancelled", "cancelled"),
        ("job_expired", "expired"),
        ("job_lost", "failed"),
    ):
        assert settle_job(record, Unrun(code=code, message="m"), now=5.0).status == status
    assert record.status == "queued"  # the input is not changed
