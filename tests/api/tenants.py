"""A fresh tenant with the given limits, for the api's quota and lease tests."""

from __future__ import annotations

from redis.asyncio import Redis

from llmq.api.tenancy import Tenant, TenantStore
from tests.stack import unique


async def new_tenant(redis: Redis, **limits: object) -> str:
    """Creates a tenant with a unique name and `limits`; returns its name."""
    name = unique("t")
    await TenantStore(redis).create(Tenant(name=name, **limits))  # type: ignore[arg-type]
    return name
