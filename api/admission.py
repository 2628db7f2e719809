"""Admission: reserve a request's share of its tenant's quota, and always give it back.

`admit` runs the one Lua script that checks and reserves every limit; the returned `Ticket`
must be finished exactly once with the real usage. Finishing never blocks the response and
survives cancellation (a disconnecting client cancels the task that would release): the
release runs as its own task. The reservation's lease reclaims the slot even if the api
process dies before releasing.
"""

from __future__ import annotations

import asyncio
import logging

from llmq.api.errors import ApiError
from llmq.api.tenancy import Quota, QuotaBackendDown, QuotaDecision

log = logging.getLogger(__name__)

_MESSAGES = {
    "rate_limit_exceeded": "Rate limit reached for {limit}. Retry after the indicated time.",
    "insufficient_quota": "You exceeded your {limit} quota.",
    "suspended": "This tenant is suspended.",
    "model_not_allowed": "This tenant may not use model `{model}`.",
    "unknown_tenant": "Unknown tenant.",
}


class Ticket:
    """A held reservation; `finish` releases it once."""

    __slots__ = ("_admission", "headers", "job_id", "model", "open", "tenant")

    def __init__(
        self,
        admission: Admission | None,
        tenant: str,
        model: str,
        job_id: str,
        headers: dict[str, str],
    ) -> None:
        self._admission = admission
        self.tenant = tenant
        self.model = model
        self.job_id = job_id
        self.headers = headers
        self.open = admission is not None

    def finish(self, prompt_tokens: int, completion_tokens: int, failed: bool) -> None:
        if not self.open or self._admission is None:
            return
        self.open = False
        self._admission.release_later(self, prompt_tokens, completion_tokens, failed)


class Admission:
    def __init__(self, quota: Quota, fail_open: bool) -> None:
        self.quota = quota
        self.fail_open = fail_open
        self._releases: set[asyncio.Task[None]] = set()

    async def admit(
        self, tenant: str, model: str, prompt_tokens: int, max_tokens: int, job_id: str
    ) -> Ticket:
        if not tenant:
            return Ticket(None, tenant, model, job_id, {})
        try:
            decision = await self.quota.reserve(tenant, model, prompt_tokens, max_tokens, job_id)
        except QuotaBackendDown:
            if self.fail_open:
                log.warning("redis down: admitting %s without a quota check", job_id)
                return Ticket(None, tenant, model, job_id, {})
            raise ApiError(503, "the quota store is unavailable", "quota_store_down") from None
        if not decision.allowed:
            raise _refusal(decision, model)
        return Ticket(self, tenant, model, job_id, decision.headers())

    def release_later(self, ticket: Ticket, prompt: int, completion: int, failed: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self._release(ticket, prompt, completion, failed)
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, ticket: Ticket, prompt: int, completion: int, failed: bool) -> None:
        for attempt in range(5):
            try:
                await self.quota.release(
                    ticket.tenant, ticket.model, ticket.job_id, prompt, completion, failed=failed
                )
                return
            except QuotaBackendDown:
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("could not release job %s; its lease will reclaim the slot", ticket.job_id)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for pending releases (at shutdown)."""
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=timeout)


def _refusal(decision: QuotaDecision, model: str) -> ApiError:
    reason = decision.reason
    message = _MESSAGES.get(reason, reason).format(limit=decision.limit or "this", model=model)
    status = decision.http_status
    error_type = reason if status == 429 else "permission_error"
    param = "model" if reason == "model_not_allowed" else None
    return ApiError(
        status, message, reason, type=error_type, param=param, headers=decision.headers()
    )
