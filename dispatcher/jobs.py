"""A job as the api publishes it: its envelope (the headers of docs/protocol.md, "A job")
and the OpenAI body."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from llmq.schemas import names
from llmq.schemas.envelope import DEFAULT_KIND, JobEnvelope, JobKind


def new_job_id() -> str:
    """Subject-safe, and used as the OpenAI `id` suffix and X-Request-ID: 128 random bits
    in 32 hex digits, as `uuid4().hex` gave, without building a UUID (a fifth of the CPU)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class JobSpec:
    """What the publisher of a job knows before it has a reply subject."""

    job_id: str
    model: str
    body: bytes
    tenant: str
    deadline_ms: int
    """Unix ms by which the job must be under way (`Llmq-Deadline`): taken by a worker, and
    for a stream its first token sent; a worker drops a job it fetches past it."""
    kind: JobKind = DEFAULT_KIND
    batch: bool = False
    traceparent: str | None = None
    end_ms: int = 0
    """Unix ms at which the api cuts the job even while it runs (`max_deadline`); 0: the
    deadline bounds all of it. Never on the wire: the api's cancel tells the worker."""
    stream: bool = False
    """The client reads tokens as they come, so the deadline waits for the first one; a
    job that answers whole is under way once a worker has taken it."""
    message_op: str = ""
    anthropic_version: str = ""
    anthropic_beta: str = ""
    """What a `message` job carries besides its body (`JobEnvelope`)."""
    lease: str = ""
    """`Reservation.lease` of an interactive job admitted from a lease."""

    @property
    def subject(self) -> str:
        return names.batch_subject(self.model) if self.batch else names.jobs_subject(self.model)

    def envelope(self, reply: str, msg_id: str = "") -> JobEnvelope:
        return JobEnvelope(
            id=self.job_id,
            model=self.model,
            tenant=self.tenant,
            kind=self.kind,
            reply=reply,
            deadline_ms=self.deadline_ms,
            batch=self.batch,
            traceparent=self.traceparent,
            msg_id=msg_id,
            message_op=self.message_op,
            anthropic_version=self.anthropic_version,
            anthropic_beta=self.anthropic_beta,
            lease=self.lease,
        )

    def headers(self, reply: str, msg_id: str = "") -> dict[str, str]:
        return self.envelope(reply, msg_id).to_headers()

    def seconds_left(self) -> float:
        return self.deadline_ms / 1000 - time.time()
