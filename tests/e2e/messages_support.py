"""What the Messages API's end-to-end tests share: an api with tenants and a key, workers in
front of fake upstreams, the anthropic SDK pointed at llmq, and a raw reader of the SSE
stream that checks every event with the SDK's own types (strict)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from llmq.api.tenancy import LedgerEntry, Tenant, TenantStore, UsageReader, connect
from tests.lazy import lazy
from tests.spec.anthropic import assert_event
from tests.stack import unique, wait_for

anthropic = lazy("anthropic")  # 2 s to import: only where a test uses it


@dataclass
class Keyed:
    """An api with `auth_mode=keys`, a tenant and one of its keys."""

    api: Any
    key: str
    tenant: str
    redis_url: str

    @property
    def url(self) -> str:
        return str(self.api.url)

    def client(self, **options: Any) -> anthropic.AsyncAnthropic:
        settings: dict[str, Any] = {"api_key": self.key, "max_retries": 0, **options}
        return anthropic.AsyncAnthropic(base_url=self.url, **settings)

    async def ledger(self, count: int = 20) -> list[LedgerEntry]:
        redis = connect(self.redis_url)
        try:
            return await UsageReader(redis).ledger(self.tenant, count)
        finally:
            await redis.aclose()

    async def booked(self, job_id: str) -> LedgerEntry:
        """The ledger entry of one job, once it is booked."""
        found: list[LedgerEntry] = []

        async def present() -> bool:
            found[:] = [e for e in await self.ledger() if e.job_id == job_id]
            return bool(found)

        await wait_for(present)
        return found[0]


async def keyed_api(stack: Any, redis_url: str, tenant: Tenant | None = None, **api: Any) -> Keyed:
    served = await stack.api(auth_mode="keys", key_cache_ttl=0, **api)
    tenant = tenant or Tenant(name=unique("t"), rpm=100_000)
    return Keyed(served, await tenant_key(redis_url, tenant), tenant.name, redis_url)


async def tenant_key(redis_url: str, tenant: Tenant) -> str:
    """Create `tenant` and one key of it; the key."""
    redis = connect(redis_url)
    try:
        store = TenantStore(redis)
        await store.create(tenant)
        key, _ = await store.create_key(tenant.name)
        return key
    finally:
        await redis.aclose()


async def serving(keyed: Keyed, model: str) -> None:
    await wait_for(lambda: keyed.api.runtime.registry.workers_for(model))


async def raw_stream(
    keyed: Keyed, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a streamed request; the response and its events, each named by its `event:` line
    as its `type`, each valid for the SDK (strict)."""
    sent = {"x-api-key": keyed.key, "anthropic-version": "2023-06-01", **(headers or {})}
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{keyed.url}/v1/messages", json={**body, "stream": True}, headers=sent
        ) as resp:
            name = ""
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    assert event["type"] == name, (name, event)
                    assert_event(event)
                    events.append(event)
    return resp, events
