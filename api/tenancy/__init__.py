"""Tenants, API keys, prices, quotas and usage: the Redis data layer the HTTP api calls.

Build one `TenantStore`, one `Quota` and one `UsageReader` per process on one shared
`redis.asyncio.Redis` client (`connect` builds a suitable one). Every call raises
`QuotaBackendDown` when Redis is down: answer 503, never let the request through.
"""

from __future__ import annotations

from llmq.api.tenancy.client import check_at_start, connect, connect_with
from llmq.api.tenancy.errors import QuotaBackendDown, TenantExists, UnknownTenant
from llmq.api.tenancy.models import (
    ApiKey,
    KeyInput,
    KeySettings,
    LedgerEntry,
    Price,
    QuotaDecision,
    Reservation,
    Tenant,
    UsageRow,
)
from llmq.api.tenancy.quota import Quota
from llmq.api.tenancy.store import TenantStore
from llmq.api.tenancy.usage import UsageReader

__all__ = [
    "ApiKey",
    "KeyInput",
    "KeySettings",
    "LedgerEntry",
    "Price",
    "Quota",
    "QuotaBackendDown",
    "QuotaDecision",
    "Reservation",
    "Tenant",
    "TenantExists",
    "TenantStore",
    "UnknownTenant",
    "UsageReader",
    "UsageRow",
    "check_at_start",
    "connect",
    "connect_with",
]
