"""The response cache's service (api/cache/service.py) when the tenant store does not answer."""

from __future__ import annotations

from llmq.api.cache.service import ResponseCache
from llmq.api.cache.store import CacheStore
from llmq.api.model_table import ModelTable
from llmq.api.tenancy import TenantStore, connect
from llmq.schemas.settings import CacheSettings, Settings
from tests.stack import refused_port


async def test_a_tenant_scope_is_none_while_the_tenant_store_is_down(redis_server) -> None:  # type: ignore[no-untyped-def]
    """The request then goes on without the cache (a 500 before: `QuotaBackendDown` raised
    into the request from a slow or lost Redis)."""
    down = connect(f"redis://127.0.0.1:{refused_port()}", timeout=0.5)
    store = connect(redis_server.url, decode_responses=False)
    cache = ResponseCache(
        CacheStore(store, CacheSettings()), ModelTable(Settings()), TenantStore(down)
    )
    try:
        assert await cache.scope("acme") is None
        assert await cache.scope("") == "_"  # no tenant: no store asked
        cache.tenants = TenantStore(store)
        assert await cache.scope("acme")  # the store back: a scope, kept from then on
    finally:
        await down.aclose()
        await store.aclose()
