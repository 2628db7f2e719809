"""A job as the api publishes it: the headers of DESIGN.md and the OpenAI body."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from llmq.schemas import names


def new_job_id() -> str:
    """Sortable-enough, subject-safe, and used as the OpenAI `id` suffix and X-Request-ID."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class JobSpec:
    job_id: str
    model: str
    body: bytes
    tenant: str
    deadline_ms: int
    kind: str = "chat"
    batch: bool = False
    traceparent: str | None = None

    @property
    def subject(self) -> str:
        return names.batch_subject(self.model) if self.batch else names.jobs_subject(self.model)

    def headers(self, reply: str) -> dict[str, str]:
        headers = {
            names.H_JOB: self.job_id,
            names.H_TENANT: self.tenant,
            names.H_REPLY: reply,
            names.H_DEADLINE: str(self.deadline_ms),
            names.H_MSG_ID: self.job_id,
        }
        if self.kind != "chat":
            headers[names.H_KIND] = self.kind
        if self.traceparent:
            headers[names.H_TRACEPARENT] = self.traceparent
        return headers

    def seconds_left(self) -> float:
        return self.deadline_ms / 1000 - time.time()
