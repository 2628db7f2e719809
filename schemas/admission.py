"""What admitting a request produces, the same for every way it arrives (interactive HTTP,
an async job, a batch line): the prepared request, or a refusal; a reservation of the
tenant's quota, later released with the usage the job really had.

Plain values, no I/O, so that the api and the batch machinery in `dispatcher/batch` share
them without importing each other. Only the HTTP edge turns a `Refusal` into an error
response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from llmq.schemas.envelope import JobKind
from llmq.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

AnyRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


@dataclass(slots=True)
class PreparedRequest:
    """A request ready to queue: model resolved, defaults applied, tokens estimated."""

    request: AnyRequest
    model: str
    body: bytes
    """What to publish: the original bytes, or re-encoded when something was changed."""
    kind: JobKind
    stream: bool
    prompt_estimate: int
    max_tokens: int
    """Tokens to reserve for the completion: every choice (`n`) times its output limit
    (0 for embeddings)."""


class Refusal(Exception):
    """A request llmq will not run: a bad body, an unknown model, a quota. Raised by the
    preparer, returned by `reserve`; the HTTP edge renders it in OpenAI's error shape.

    `retry_after` set: refused for now (a rate limit, a budget, the quota store away), the
    same request may be asked again after that many seconds."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param
        self.headers = dict(headers or {})
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Reservation:
    """A job's held share of its tenant's quota, named by its job id. `held` is False when
    nothing was reserved (no tenant, or the quota store was away and llmq fails open):
    releasing it then does nothing. Whoever ends the job releases it, exactly once (the
    quota store also ignores a second release of one job id)."""

    tenant: str
    model: str
    job_id: str
    held: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    """Rate-limit headers (`x-ratelimit-*`) for the response."""
    lease: str = ""
    """Admitted from this replica's leased budget, with no Redis call: the ticket its
    booking needs (`api.tenancy.leases`; the job envelope carries it, `Llmq-Lease`)."""


@dataclass(frozen=True, slots=True)
class JobUsage:
    """What a job really used, booked in place of its reservation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False
    cached_tokens: int = 0
    """Part of `prompt_tokens` read from the upstream's cache (priced as cached input)."""
    cache_write_tokens: int = 0
    """Part of `prompt_tokens` written to the upstream's cache (priced as cache writes)."""
    cache: str = ""
    """How llmq's response cache answered ('hit', 'join'), '' for a job of its own."""
    cache_price: float = 0.0
    """With `cache`: the whole cost booked (the model's `cache_hit_price`)."""


FAILED: Final = JobUsage(failed=True)
"""A job that ended without running: everything reserved is given back."""
