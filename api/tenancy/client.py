"""The Redis client the tenancy layer expects: a blocking pool, short timeouts, the
operator's password and TLS; one Redis/Valkey server, a Sentinel-watched master that
survives a node (`redis+sentinel://`), or a Redis/Valkey Cluster (`redis+cluster://`).

redis-py's default async pool raises `MaxConnectionsError` at 100 concurrent commands,
which under load would turn into 503s; a blocking pool makes the excess wait (up to
`timeout`) for a free connection instead (`llmq._fast.redis` has a faster one while its
gate is open). Every connection, in every mode, packs its
commands with hiredis (`HiredisPacking`): redis-py's asyncio connection packs in Python,
the largest item of the api's profile (the quota script's `EVALSHA` has ~21 arguments).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff

from llmq._fast import redis as fast_redis
from llmq.dispatcher.connection import redact_url
from llmq.schemas.settings import ConnectionSettings

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None = getattr(hiredis, "pack_command", None)
"""hiredis >= 2.3 packs; an older one leaves packing to redis-py."""

log = logging.getLogger(__name__)

SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_RETRIES = 2
"""Tries of a Cluster command after the first, each on a freshly read slot map."""


class HiredisPacking(AbstractConnection):
    """Packs a command with hiredis (C) instead of redis-py's Python loop: the same bytes
    for the types llmq sends (str, bytes, int, float). Anything hiredis refuses (a bool,
    None, a bytearray, an int subclass) and a command name with a space in it
    ("CONFIG GET") go to redis-py's own packer, which splits, encodes or raises as ever;
    so does a connection whose encoding is not UTF-8/strict (hiredis encodes str as UTF-8)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        encoder = self.encoder
        utf8 = encoder.encoding.lower().replace("-", "") == "utf8"
        self._hiredis_pack = _hiredis_pack if utf8 and encoder.encoding_errors == "strict" else None

    def pack_command(self, *args: Any) -> list[bytes]:
        pack, first = self._hiredis_pack, args[0]
        if pack is not None and type(first) is str and " " not in first:
            try:
                return [pack(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


_PACKING: dict[tuple[type[AbstractConnection], bool], type[AbstractConnection]] = {}
_C = TypeVar("_C", bound=AbstractConnection)


def packing(cls: type[_C]) -> type[_C]:
    """`cls` (redis-py's plain, TLS, unix-socket or Sentinel-managed connection) with
    `HiredisPacking`'s `pack_command` (and, while the redis-py gate is open, the direct write
    of `llmq._fast.redis.DirectWrite`); one subclass per class, made once."""
    if issubclass(cls, HiredisPacking):
        return cls
    fast = fast_redis.GATE.open
    if (cls, fast) not in _PACKING:
        bases = (fast_redis.DirectWrite, HiredisPacking, cls) if fast else (HiredisPacking, cls)
        _PACKING[cls, fast] = type(f"Hiredis{cls.__name__}", bases, {})
    return cast(type[_C], _PACKING[cls, fast])


def _hosts(text: str, default_port: int) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        out.append((host or "127.0.0.1", int(port or default_port)))
    return out


def _split_auth(rest: str) -> tuple[str, str]:
    """`[:password@]hosts...` -> (password, hosts...)."""
    if "@" not in rest.split("/", 1)[0]:
        return "", rest
    auth, _, rest = rest.partition("@")
    return auth.partition(":")[2] if ":" in auth else auth, rest


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str]:
    """`redis+sentinel://[:password@]h1:26379,h2:26379/<master-name>[/db]` ->
    (sentinels, master name, db, password)."""
    password, rest = _split_auth(url.removeprefix(SENTINEL_SCHEME))
    hosts, _, path = rest.partition("/")
    master, _, db = path.partition("/")
    if not hosts or not master:
        raise ValueError(
            "a sentinel URL needs hosts and a master name: "
            "redis+sentinel://host:26379,.../<master-name>[/db]"
        )
    return _hosts(hosts, 26379), master, int(db or 0), password


class _Cluster(RedisCluster):
    """A Cluster client whose `pipeline(transaction=True)` runs as a plain pipeline: MULTI
    cannot span slots, and the admin writes that use it (delete a tenant, create or revoke a
    key) touch a global key and a tenant's. Each command stays atomic, the group does not."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return super().pipeline(transaction=False, shard_hint=shard_hint)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """As redis-py's, but a connection closed under a command is a `ConnectionError`
        (Redis down: a 503), not an `AttributeError` (a 500): during a failover redis-py
        disconnects a node's idle connections while another command may just have taken
        one (`'NoneType' object has no attribute 'writelines'`, seen in 1 of ~4 runs of
        tests/api/test_redis_cluster_failover.py)."""
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise redis_errors.ConnectionError("connection closed during a failover") from exc


class SentinelPasswordRefused(MasterNotFoundError):
    """No master found because the sentinels refused AUTH: a missing or wrong
    `LLMQ_REDIS_SENTINEL_PASSWORD` (the operator's to fix, not an outage to wait out)."""


class _Sentinel(Sentinel):
    """Names a refused AUTH (redis-py folds every sentinel's error into one
    `MasterNotFoundError`), so the api's log and the CLI's message say what to check."""

    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            if "Authentication" in str(exc):
                raise SentinelPasswordRefused(
                    f"the sentinels refused authentication for {service_name!r}"
                ) from exc
            raise


def is_cluster(redis: Any) -> bool:
    """The client speaks to a Redis/Valkey Cluster: multi-key work must stay in one slot."""
    return isinstance(redis, RedisCluster)


def _sentinel_client(url: str, password: str, sentinel_password: str, **common: Any) -> Redis:
    """The URL's or `password` authenticates to the data nodes, `sentinel_password` to the
    sentinels (their own `requirepass`; none when empty)."""
    sentinels, master, db, url_password = parse_sentinel_url(url)
    # One try per sentinel: the next sentinel is the retry. redis-py's default (3 retries
    # with backoff, also on a refused AUTH) made a wrong password take 12 s to surface.
    asking = dict(common, password=sentinel_password or None, retry=Retry(NoBackoff(), 0))
    sentinel = _Sentinel(sentinels, sentinel_kwargs=asking, **common)
    return sentinel.master_for(
        master,
        db=db,
        password=url_password or password or None,
        connection_class=packing(SentinelManagedConnection),
    )


def _cluster_client(url: str, password: str, max_connections: int, **common: Any) -> Redis:
    url_password, hosts = _split_auth(url.removeprefix(CLUSTER_SCHEME))
    nodes = [ClusterNode(host, port) for host, port in _hosts(hosts.rstrip("/"), 6379)]
    cluster = _Cluster(
        startup_nodes=nodes,
        password=url_password or password or None,
        max_connections=max_connections,
        # Two more tries, each after re-reading the slot map: enough to follow a failover
        # that is over, and bounded while one is not (redis-py's default of 10, each up to
        # a connect timeout, held a command ~11 s on a dead host instead of a quick 503).
        retry=Retry(NoBackoff(), CLUSTER_RETRIES),
        **common,
    )
    # redis-py's Cluster takes no connection class: set it where its nodes read it (the
    # startup nodes made in __init__; the kwargs every node found later is made with).
    packed = packing(cluster.connection_kwargs["connection_class"])
    cluster.connection_kwargs["connection_class"] = packed
    for node in cluster.startup_nodes:
        node.connection_class = packed
    # The commands llmq uses exist on both; callers ask `is_cluster` where they differ.
    return cast(Redis, cluster)


def connect(
    url: str,
    *,
    timeout: float = 1.0,
    max_connections: int = 200,
    password: str = "",
    tls_ca: str = "",
    sentinel_password: str = "",
    decode_responses: bool = True,
) -> Redis:
    """A client for `url`; a command slower than `timeout` s raises (-> `QuotaBackendDown`).
    `password` is used when the URL carries none (a URL's own wins); `tls_ca` verifies a
    `rediss://` server. `redis+sentinel://` gives a client of the master the sentinels name
    (asked with `sentinel_password`), which follows a failover; `redis+cluster://host:port,...`
    a Cluster client."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": decode_responses,
    }
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_client(url, password, sentinel_password, **common)
    if url.startswith(CLUSTER_SCHEME):
        return _cluster_client(url, password, max_connections, **common)
    extra: dict[str, Any] = {}
    if password:
        extra["password"] = password
    if tls_ca and url.startswith("rediss://"):
        extra["ssl_ca_certs"] = tls_ca
    pool = fast_redis.blocking_pool().from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=decode_responses,
        **extra,
    )
    pool.connection_class = packing(pool.connection_class)
    return Redis(connection_pool=pool)


def redis_target(conn: ConnectionSettings) -> str:
    """The URL `connect_with` uses by default: `conn.redis_sentinels` as a sentinel URL when
    set, else `conn.redis_url`."""
    if conn.redis_sentinels:
        hosts = ",".join(conn.redis_sentinels)
        return f"{SENTINEL_SCHEME}{hosts}/{conn.redis_sentinel_master}/{conn.redis_sentinel_db}"
    return conn.redis_url


def connect_with(conn: ConnectionSettings, url: str = "", **kwargs: Any) -> Redis:
    """`connect` to `url` (default `redis_target(conn)`) with `conn`'s passwords (data
    nodes and sentinels) and TLS CA."""
    return connect(
        url or redis_target(conn),
        password=conn.secret("redis_password"),
        sentinel_password=conn.secret("redis_sentinel_password"),
        tls_ca=conn.redis_tls_ca,
        **kwargs,
    )


_AUTH_REFUSALS = ("username-password", "NOAUTH", "already authenticated", "Authentication")
"""How a refused AUTH reads inside the Cluster client's "cannot be connected" error."""


def _refused_auth(exc: BaseException) -> bool:
    return any(text in str(exc) for text in _AUTH_REFUSALS)


async def check_at_start(redis: Redis, url: str, timeout: float) -> bool:
    """Ping once and log clearly (never the password) why Redis cannot be used; the process
    keeps running (`/ready` reports `redis` failing until it can)."""
    shown = redact_url(url)
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except SentinelPasswordRefused:
        log.error(
            "Redis Sentinels at %s refused authentication: check "
            "LLMQ_REDIS_SENTINEL_PASSWORD(_FILE) (the sentinels' own password)",
            shown,
        )
        return False
    except MasterNotFoundError as exc:
        errors = ", ".join(re.findall(r" - ([\w:.]+)", str(exc))) or "none answered"
        log.error("Redis Sentinels at %s name no usable master (%s)", shown, errors)
        return False
    except (redis_errors.AuthenticationError, redis_errors.RedisClusterException) as exc:
        if not isinstance(exc, redis_errors.AuthenticationError) and not _refused_auth(exc):
            log.error("Redis at %s is not usable at start: %s", shown, exc)
            return False
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
