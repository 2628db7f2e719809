"""Tenant scopes: the namespace of a tenant's durable data (files, jobs, batches).

The api knows a caller by tenant name; what it stores in JetStream it keys by the tenant's
scope, `<name>~<immutable id>` (`names.tenant_scope`), so a tenant deleted and created
again under the same name starts empty. Quotas and usage stay keyed by the name: the batch
machinery hands the scope back on every reserve and release, and `ScopedReservations`
turns it into the name before it reaches the quota store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from llmq.api.errors import ApiError
from llmq.api.reservations import Reservations
from llmq.api.tenancy import QuotaBackendDown, TenantStore
from llmq.api.tenancy.store_wait import StoreWait
from llmq.schemas import names
from llmq.schemas.admission import JobUsage, Refusal, Reservation


class TenantScopes:
    """Name -> scope, read from the tenant record on every call (ids change when a name
    is reused, so no cache)."""

    def __init__(self, store: TenantStore, wait: StoreWait | None = None) -> None:
        self.store = store
        self.wait = wait
        """Waits out a short store outage (a failover) before the 503; None: no wait."""

    async def of(self, tenant: str) -> str:
        if not tenant:  # auth_mode=none: one anonymous namespace
            return tenant
        try:
            if self.wait is None:
                return await self.store.scope(tenant)
            return await self.wait.run(lambda: self.store.scope(tenant))
        except QuotaBackendDown:
            raise _down() from None

    async def storage_quota(self, tenant: str) -> int:
        """The tenant's `storage_bytes` limit; 0 = unlimited (also with no tenants)."""
        if not tenant:
            return 0
        try:
            record = await self.store.get(tenant)
        except QuotaBackendDown:
            raise _down() from None
        return record.storage_bytes if record else 0


def _down() -> ApiError:
    return ApiError(503, "the tenant store is unavailable", "tenant_store_down")


class ScopedReservations:
    """`Reservations` for the batch machinery, which names tenants by scope."""

    def __init__(self, reservations: Reservations) -> None:
        self.inner = reservations

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
        name = names.tenant_of_scope(tenant)
        # A batch line retries later by itself (`retry_after`): it does not hold the loop.
        return await self.inner.reserve(
            name, model, prompt_tokens, max_tokens, job_id, key_id=key_id, wait=0.0
        )

    async def release(self, reservation: Reservation, usage: JobUsage) -> None:
        await self.inner.release(by_name(reservation), usage)

    def adopt(self, tenant: str, job_ids: Iterable[str]) -> None:
        """Renew these durable reservations (by name) where `Reservations` can renew."""
        adopt = getattr(self.inner, "adopt", None)
        if adopt is not None:
            adopt(names.tenant_of_scope(tenant), job_ids)


def by_name(reservation: Reservation) -> Reservation:
    name = names.tenant_of_scope(reservation.tenant)
    return (
        reservation if name == reservation.tenant else dataclasses.replace(reservation, tenant=name)
    )
