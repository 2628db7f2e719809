"""The Redis client the tenancy layer expects: a blocking pool, short timeouts.

redis-py's default async pool raises `MaxConnectionsError` at 100 concurrent commands,
which under load would turn into 503s; a blocking pool makes the excess wait (up to
`timeout`) for a free connection instead.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def connect(url: str, *, timeout: float = 1.0, max_connections: int = 200) -> Redis:
    """A client for `url`; a command slower than `timeout` s raises (-> `QuotaBackendDown`)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    return Redis(connection_pool=pool)
