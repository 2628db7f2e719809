"""The key names the quota scripts are called with, built once per tenant, API key and day.

`quota.lua` takes 13 keys and `release.lua` 8; all but the reservation's own (the one that
names the job) are the same for every request of a tenant (and key) on one UTC day, so
they are kept rather than formatted again per request.
"""

from __future__ import annotations

from llmq.schemas import names

CACHE_SIZE = 4096
"""Tenant/key/day combinations kept (all dropped at once when full: a new day's names)."""


class ScriptKeys:
    """Key names for one `Quota`; `cluster`: every key in the tenant's slot (a Cluster
    client), the shared price table and ledger replaced by the tenant's own keys."""

    def __init__(self, cluster: bool) -> None:
        self._cluster = cluster
        self._reserve: dict[tuple[str, str, str, str], tuple[tuple[str, ...], tuple[str, ...]]]
        self._reserve = {}
        self._release: dict[tuple[str, str], tuple[str, ...]] = {}

    def reserve(self, tenant: str, key_id: str, job_id: str, day: str, month: str) -> list[str]:
        """`quota.lua`'s keys for one request of `tenant` (with `key_id`'s own limits)."""
        at = (tenant, key_id, day, month)
        kept = self._reserve.get(at)
        if kept is None:
            if len(self._reserve) >= CACHE_SIZE:
                self._reserve.clear()
            kept = self._reserve[at] = (
                (
                    names.tenant_key(tenant),
                    names.tenant_key(tenant) if self._cluster else names.PRICES_KEY,
                    names.inflight_key(tenant),
                    names.rate_key(tenant),
                    names.day_quota_key(tenant, day),
                    names.month_quota_key(tenant, month),
                ),
                (names.tenant_api_keys_key(tenant), *key_scope(tenant, key_id, day, month)),
            )
        head, tail = kept
        return [*head, names.reservation_key(tenant, job_id), *tail]

    def release(self, tenant: str, job_id: str, day: str) -> list[str]:
        """`release.lua`'s keys for one job of `tenant` ending on `day`."""
        at = (tenant, day)
        kept = self._release.get(at)
        if kept is None:
            if len(self._release) >= CACHE_SIZE:
                self._release.clear()
            kept = self._release[at] = (
                names.inflight_key(tenant),
                names.usage_key(tenant, day),
                names.tenant_ledger_key(tenant) if self._cluster else names.LEDGER_KEY,
                names.tenant_ledger_key(tenant),
                names.usage_by_key(tenant, day, "key"),
                names.usage_by_key(tenant, day, "user"),
                names.key_last_used_key(tenant),
            )
        return [names.reservation_key(tenant, job_id), *kept]


def key_scope(tenant: str, key_id: str, day: str, month: str) -> list[str]:
    """The key's in-flight, rate, day and month keys (unused names when there is no key)."""
    prefix = names.key_quota_prefix(tenant, key_id or "-")
    return [f"{prefix}:inflight", f"{prefix}:rate", f"{prefix}:d:{day}", f"{prefix}:m:{month}"]
