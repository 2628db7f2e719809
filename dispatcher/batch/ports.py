"""What the api plugs into the batch machinery: how a request body becomes a job (model
aliases, defaults, token estimates) and how its quota is reserved and released."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Prepared:
    """A request ready to queue."""

    model: str
    body: bytes
    kind: str
    prompt_tokens: int
    max_tokens: int


class Refused(Exception):
    """The request cannot run at all (bad body, unknown model, not allowed): it gets an
    error instead of a result."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


class Preparer(Protocol):
    def prepare(self, kind: str, body: bytes, tenant: str) -> Prepared:
        """Decode and check `body` for `kind`; raise `Refused` when it cannot run."""
        ...


class Accounting(Protocol):
    async def reserve(self, tenant: str, prepared: Prepared, job_id: str) -> float | None:
        """Hold the job's quota. None: held. A number: refused for now (a rate limit or
        budget), ask again after that many seconds. Raises `Refused` when the tenant may
        never run it."""
        ...

    async def release(
        self,
        tenant: str,
        model: str,
        job_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        failed: bool,
    ) -> None:
        """Book the job's real usage and free its reservation. Idempotent per job id."""
        ...


class NoAccounting:
    """auth_mode none: nothing to hold or book."""

    async def reserve(self, tenant: str, prepared: Prepared, job_id: str) -> float | None:
        return None

    async def release(
        self,
        tenant: str,
        model: str,
        job_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        failed: bool,
    ) -> None:
        return None
