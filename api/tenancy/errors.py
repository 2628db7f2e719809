"""Failures of the tenancy backend, so the api can fail closed with a 503."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions as redis_errors


class QuotaBackendDown(Exception):
    """Redis/Valkey did not answer: the api must refuse (503), never let a request through."""


class TenantExists(Exception):
    """`create` of a tenant name that is already taken."""


class UnknownTenant(Exception):
    """An operation on a tenant that does not exist."""


_DOWN = (
    redis_errors.ConnectionError,  # includes BusyLoadingError
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
    # A Cluster in the middle of a failover: its slots have no master yet.
    redis_errors.ClusterDownError,  # includes MasterDownError
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
)
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
"""What redis-py's Cluster client raises (a bare `RedisClusterException`) when no node
answers, or none accepts the password."""


@contextmanager
def backend_guard() -> Iterator[None]:
    """Turn "Redis is unreachable" into `QuotaBackendDown`; other errors stay what they are."""
    try:
        yield
    except _DOWN as exc:
        raise QuotaBackendDown(f"redis unavailable: {type(exc).__name__}") from exc
    except redis_errors.RedisClusterException as exc:
        if not str(exc).startswith(_CLUSTER_UNREACHABLE):
            raise
        raise QuotaBackendDown(f"redis unavailable: {_CLUSTER_UNREACHABLE}") from exc
