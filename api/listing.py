"""What the job, file and batch serving modules share: OpenAI list pages, 404s, the pacing
of list calls, and the refusal of new work while the api shuts down."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from llmq.api.errors import ApiError
from llmq.api.runtime import Runtime
from llmq.api.tenancy import QuotaBackendDown
from llmq.api.tenancy.request_rate import UNKNOWN, RequestRate


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object around one page of views."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def page_limit(limit: int) -> int:
    return max(1, min(limit, 100))


def not_found(kind: str, public_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: '{public_id}'", f"{kind}_not_found", param=param)


def ensure_accepting(runtime: Runtime) -> None:
    """503 for new work once the api has begun to shut down."""
    if not runtime.accepting:
        raise ApiError(503, "the api is shutting down", "shutting_down")


def _too_many(message: str, retry_after: float) -> ApiError:
    return ApiError(
        429,
        message,
        "rate_limit_exceeded",
        type="rate_limit_exceeded",
        headers={"retry-after": str(max(1, math.ceil(retry_after)))},
    )


class ListGate:
    """A list call reads a tenant's part of a bucket through a short-lived JetStream
    consumer: each tenant may have `per_tenant` open on a replica (more: 429 at once, so a
    flood from one tenant holds a bounded number of consumers and never queues another
    tenant's calls), and each counts against the RPM of the tenant and its key."""

    def __init__(self, rate: RequestRate | None, per_tenant: int) -> None:
        self.rate = rate
        self.per_tenant = per_tenant
        self._open: dict[str, int] = {}

    @asynccontextmanager
    async def enter(self, tenant: str, key_id: str = "") -> AsyncIterator[None]:
        if self._open.get(tenant, 0) >= self.per_tenant:
            raise _too_many(f"At most {self.per_tenant} list calls at once.", 1)
        self._open[tenant] = self._open.get(tenant, 0) + 1
        try:
            await self.count(tenant, key_id)
            yield
        finally:
            left = self._open[tenant] - 1
            if left:
                self._open[tenant] = left
            else:
                del self._open[tenant]

    async def count(self, tenant: str, key_id: str) -> None:
        """Count one request that holds no tokens against the RPM; 429 past it."""
        if self.rate is None or not tenant:
            return
        try:
            wait = await self.rate.take(tenant, key_id)
        except QuotaBackendDown:
            return  # a list spends nothing: served while the quota store is away
        if wait == UNKNOWN and key_id:  # revoked since it was cached
            raise ApiError(401, "Incorrect API key provided.", "invalid_api_key")
        if wait > 0:  # (a tenant without a record, header mode: nothing to count)
            raise _too_many("Rate limit reached for rpm. Retry after the indicated time.", wait)
