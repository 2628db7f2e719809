"""The Redis client the tenancy layer expects: a blocking pool, short timeouts, the
operator's password and TLS.

redis-py's default async pool raises `MaxConnectionsError` at 100 concurrent commands,
which under load would turn into 503s; a blocking pool makes the excess wait (up to
`timeout`) for a free connection instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from llmq.dispatcher.connection import redact_url
from llmq.schemas.settings import ConnectionSettings

log = logging.getLogger(__name__)


def connect(
    url: str,
    *,
    timeout: float = 1.0,
    max_connections: int = 200,
    password: str = "",
    tls_ca: str = "",
) -> Redis:
    """A client for `url`; a command slower than `timeout` s raises (-> `QuotaBackendDown`).
    `password` is used when the URL carries none (a URL's own wins); `tls_ca` verifies a
    `rediss://` server."""
    extra: dict[str, Any] = {}
    if password:
        extra["password"] = password
    if tls_ca and url.startswith("rediss://"):
        extra["ssl_ca_certs"] = tls_ca
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        **extra,
    )
    return Redis(connection_pool=pool)


def connect_with(conn: ConnectionSettings, url: str = "", **kwargs: Any) -> Redis:
    """`connect` to `url` (default `conn.redis_url`) with `conn`'s password and TLS CA."""
    return connect(
        url or conn.redis_url,
        password=conn.secret("redis_password"),
        tls_ca=conn.redis_tls_ca,
        **kwargs,
    )


async def check_at_start(redis: Redis, url: str, timeout: float) -> bool:
    """Ping once and log clearly (never the password) why Redis cannot be used; the process
    keeps running (`/ready` reports `redis` failing until it can)."""
    shown = redact_url(url)
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except redis_errors.AuthenticationError as exc:
        log.error(
            "Redis at %s refused authentication (%s): check LLMQ_REDIS_PASSWORD(_FILE) or "
            "the password in LLMQ_REDIS_URL",
            shown,
            exc,
        )
        return False
    except Exception as exc:
        log.error("Redis at %s is not usable at start: %s", shown, exc or type(exc).__name__)
        return False
    return True
