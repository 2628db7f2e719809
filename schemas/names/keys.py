"""Every Redis/Valkey key llmq uses: the quota state, tenants and API keys, usage, fair
share, the response cache."""

from __future__ import annotations

from llmq.schemas.names.subjects import escape_model

REDIS_PREFIX = "llmq:"
"""Tenant names are restricted to `[A-Za-z0-9._@-]` (no `:`, no braces), so every key below is
unambiguous. Every key of one tenant carries the Cluster hash tag `{<tenant>}` (`tenant_tag`),
so a Redis/Valkey Cluster keeps them in one slot and a quota script never crosses slots; the
global keys (tenant set, prices, key lookup, global ledger) are never touched by a script
together with a tenant's. A new per-tenant key must use `tenant_tag` too. Before hash tags the
tenant appeared bare (`llmq:q:acme:inflight`): `llmq redis migrate-keys` renames such keys
(docs/operations.md)."""


def tenant_tag(tenant: str) -> str:
    """`{<tenant>}`: the part of a key Redis Cluster hashes, the same for all of a tenant's keys."""
    return "{" + tenant + "}"


DATA_MARKER_KEY = f"{REDIS_PREFIX}marker"
"""Written once into a new Valkey (its value also kept in NATS): when it is gone, Valkey lost
llmq's data (a restart without persistence, a new server) and `/ready` says so."""
TENANTS_KEY = f"{REDIS_PREFIX}tenants"
"""Set of every tenant name."""
PRICES_KEY = f"{REDIS_PREFIX}prices"
"""Hash: model -> JSON `{"input_per_1m", "output_per_1m"}` (USD per million tokens)."""
DELETED_SCOPES_KEY = f"{REDIS_PREFIX}deleted-scopes"
"""Sorted set: scope (`tenant_scope`) of a deleted tenant -> when it was deleted (unix s).
The api purges its files, jobs and batches from JetStream until a batch that was running
then can no longer write anything (`BatchSettings.batch_max_window` later)."""
LEDGER_KEY = f"{REDIS_PREFIX}ledger"
"""Stream: one entry per released job, every tenant (capped with MAXLEN ~)."""


def tenant_key(tenant: str) -> str:
    """Hash: the tenant record (limits, status, allowed models as JSON)."""
    return f"{REDIS_PREFIX}tenant:{tenant_tag(tenant)}"


def tenant_api_keys_key(tenant: str) -> str:
    """Hash: key id -> JSON `ApiKey` (no secret), for listing and revoking."""
    return f"{REDIS_PREFIX}tenant:{tenant_tag(tenant)}:keys"


def key_last_used_key(tenant: str) -> str:
    """Hash: key id -> when a job of that key last ended (unix ms). Written by the job's
    release (`release.lua`, off the request path, no extra round trip); read by key listings."""
    return f"{REDIS_PREFIX}tenant:{tenant_tag(tenant)}:keys:last-used"


def api_key_key(sha256_hex: str) -> str:
    """String: JSON `ApiKey` found by the SHA-256 of the plaintext key."""
    return f"{REDIS_PREFIX}apikey:{sha256_hex}"


def fair_share_keys(model: str) -> tuple[str, str, str]:
    """One model's fair-share state, shared by every api replica (`api.fair_ledger`), in one
    Cluster slot (`{<escaped model>}`): sorted set `:q` of queued-not-started tickets
    (`<tenant>\t<ticket>` -> expiry ms), hash `:n` (tenant -> how many of them), sorted set
    `:w` of the lines waiting to queue (`<rank>\t<tenant>` -> lease expiry ms)."""
    base = f"{REDIS_PREFIX}fair:{{{escape_model(model)}}}"
    return f"{base}:q", f"{base}:n", f"{base}:w"


def inflight_key(tenant: str) -> str:
    """Sorted set: job id -> lease expiry (unix ms); the concurrency slots in use."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:inflight"


def window_key(tenant: str, minute: int) -> str:
    """Hash `req`, `tok` of one fixed minute (unix s // 60), before GCRA rates: unread."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:w:{minute}"


def rate_key(tenant: str) -> str:
    """Hash `req`, `tok`: the GCRA theoretical arrival times (unix ms, float) of the
    tenant's requests and tokens per minute (docs/tenants.md, "Exact rates")."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:rate"


CONSOLE_ENDED_PREFIX = f"{REDIS_PREFIX}console:ended:"
"""+ a session id: a console session logged out (its cookie refused) until it would expire."""


def stored_keys(scope: str, of: str = "stored") -> list[str]:
    """Hash `<kind>:<hex>` -> bytes (and `_total`) of stored records; zset of their expiry.
    `of="files"`: file id -> bytes of the scope's files (`api/batch/file_bytes.py`)."""
    base = f"{REDIS_PREFIX}{of}:{tenant_tag(scope)}"
    return [base, f"{base}:exp"]


def key_quota_prefix(tenant: str, key_id: str) -> str:
    """Prefix of one API key's own quota state (`<prefix>:rate`, `:inflight`, `:d:<day>`,
    `:m:<month>`), the same shapes as the tenant's."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:k:{key_id}"


def usage_by_key(tenant: str, day: str, by: str) -> str:
    """Hash `req:<who>`, `fail:`, `in:`, `cached:`, `out:`, `usd:` for one tenant and UTC
    day, per API key id (`by="key"`) or per end user (`by="user"`, the request's `user`
    field; bounded, see `api.tenancy.quota.MAX_USERS_PER_DAY`)."""
    return f"{REDIS_PREFIX}usage:{tenant_tag(tenant)}:{day}:{by}"


def day_quota_key(tenant: str, day: str) -> str:
    """Hash `tok`: tokens reserved or used on one UTC day (YYYY-MM-DD)."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:d:{day}"


def month_quota_key(tenant: str, month: str) -> str:
    """Hash `tok`, `usd`: tokens and spend reserved or used in one UTC month (YYYY-MM)."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:m:{month}"


def reservation_key(tenant: str, job_id: str) -> str:
    """Hash: one open reservation (what and where), deleted by its release. Leases: `<job>#L`
    a budget lease, `<job>#B` a job's booking mark, `#leases` a zset of them (routing.md)."""
    return f"{REDIS_PREFIX}q:{tenant_tag(tenant)}:r:{job_id}"


def usage_key(tenant: str, day: str) -> str:
    """Hash `req:<model>`, `fail:<model>`, `in:<model>`, `out:<model>`, `usd:<model>`
    for one tenant and UTC day (YYYY-MM-DD)."""
    return f"{REDIS_PREFIX}usage:{tenant_tag(tenant)}:{day}"


def tenant_ledger_key(tenant: str) -> str:
    """Stream: the ledger entries of one tenant (capped with MAXLEN ~)."""
    return f"{REDIS_PREFIX}ledger:{tenant_tag(tenant)}"


CACHE_PREFIX = f"{REDIS_PREFIX}cache:"
"""The response cache's keys (docs/cache.md); nothing else lives under it. Each carries the
hash tag of the tenant's scope (`tenant_scope`: `<name>~<id>`, `_` with no tenants), so a
scope's entries and their bookkeeping share one Cluster slot."""


def cache_entry_key(scope: str, digest: str) -> str:
    """String: one cached answer (`api.cache.store.Entry`, sealed when LLMQ_CACHE_KEY is
    set) of a tenant scope, by the hex SHA-256 of its cache key; expires with its TTL."""
    return f"{CACHE_PREFIX}{tenant_tag(scope)}:e:{digest}"


def cache_index_key(scope: str) -> str:
    """Sorted set: digest -> expiry (unix ms) of every entry of one tenant scope, for its
    bounds (evicting the soonest to expire) and the purge of a deleted tenant."""
    return f"{CACHE_PREFIX}{tenant_tag(scope)}:index"


def cache_sizes_key(scope: str) -> str:
    """Hash: digest -> bytes of each entry of one tenant scope, and `#bytes`, their sum."""
    return f"{CACHE_PREFIX}{tenant_tag(scope)}:sizes"


def cache_scope_pattern(scope: str) -> str:
    """Every key of one tenant scope's cache (SCAN pattern)."""
    return f"{CACHE_PREFIX}{tenant_tag(scope)}:*"
