"""For the api's tests: a Redis client on the session's Valkey (a test module may override
`redis`, as the Cluster tests do), the tenancy objects on it, a fresh tenant name per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import Quota, TenantStore, UsageReader, connect
from llmq.embedded import EmbeddedRedis
from tests.stack import unique


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = connect(redis_server.url, timeout=10.0)
    yield client
    await client.aclose()


@pytest.fixture
def tenant_name() -> str:
    return unique("t")


@pytest.fixture
def store(redis: Redis) -> TenantStore:
    return TenantStore(redis)


@pytest.fixture
def quota(redis: Redis) -> Quota:
    return Quota(redis)


@pytest.fixture
def usage(redis: Redis) -> UsageReader:
    return UsageReader(redis)
