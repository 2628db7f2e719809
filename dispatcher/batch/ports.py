"""What the api plugs into the batch machinery: how a request body becomes a job (model
aliases, defaults, token estimates), how its quota is reserved and released, and where a
job's webhook delivery is queued, and where the bytes of each tenant's files are counted.

The values (`PreparedRequest`, `Refusal`, `Reservation`, `JobUsage`) live in
`schemas.admission`; the api plugs in the same preparer and reservations its interactive
path uses, so the three ways a request arrives can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from llmq.schemas.admission import JobUsage, PreparedRequest, Refusal, Reservation
from llmq.schemas.envelope import JobKind


class Preparer(Protocol):
    async def prepare_durable(self, kind: JobKind, body: bytes) -> PreparedRequest:
        """Decode and check `body` for `kind` as a job that may wait in the durable queue;
        raise `Refusal` when it cannot run."""
        ...


class Reserver(Protocol):
    async def reserve(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        job_id: str,
        *,
        key_id: str = "",
    ) -> Reservation | Refusal:
        """Hold the job's quota (and the API key `key_id`'s), or refuse: for now
        (`retry_after` set: a rate limit, a budget) or for good (the tenant may never run
        it)."""
        ...

    async def release(self, reservation: Reservation, usage: JobUsage) -> None:
        """Book the job's real usage and free its reservation. Idempotent per job id."""
        ...

    def adopt(self, tenant: str, job_ids: Iterable[str]) -> None:
        """Keep renewing these reservations (made by another replica, or by a batch runner
        that lost its lease) until they are released; see docs/tenants.md."""
        ...


class WebhookQueue(Protocol):
    async def enqueue(self, tenant: str, job_id: str) -> None:
        """Queue the delivery of an ended job's webhook (the api's `Webhooks`)."""
        ...


class FileMeter(Protocol):
    async def record(self, scope: str, file_id: str, size: int, expires_at: int | None) -> None:
        """A file of the tenant scope now takes `size` bytes (0: deleted), until
        `expires_at` (unix seconds; None: until deleted). Never raises (the api's
        `FileBytes`)."""
        ...


def reservation_of(tenant: str, model: str, job_id: str) -> Reservation:
    """The reservation of a durable job, named by its job id: whoever ends the job (the
    collector, a cancel, an expiry) releases it without having held the value."""
    return Reservation(tenant, model, job_id)
