"""Settings of tenants and quotas: how a request is authenticated and admitted."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import field_validator
from pydantic_settings import NoDecode

from llmq.schemas.settings.base import Command, Group, setting, split_commas


class TenancySettings(Group):
    """Tenants, quotas and the model table (aliases, per-model defaults)."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    tenant_header: str = setting(
        "X-Tenant-ID", "auth_mode=header: the header that names the tenant."
    )
    trusted_tenants: Annotated[list[str], NoDecode] = setting(
        default_factory=list,
        description="auth_mode=header: tenants the header may name, comma-separated.",
    )
    default_tenant: str = setting(
        "", "auth_mode=header: tenant used when the header is absent; empty = 401."
    )
    key_cache_ttl: float = setting(
        5.0, "Seconds a resolved API key is cached; a revoked key works this long."
    )
    quota_fail_open: bool = setting(
        False, "Serve without quota checks while Redis is down (default: 503)."
    )
    quota_store_wait: float = setting(
        4.0,
        "Seconds a request waits for an unreachable quota store (a failover, a restart) "
        "before that 503, never past its own deadline; 0: refuse at once (quota_fail_open: "
        "no wait).",
        commands=(),
        ge=0,
        le=60,
    )
    default_max_tokens: int = setting(
        4096, "Tokens reserved for a request that sets no max_tokens."
    )
    max_output_tokens: int = setting(
        1_000_000,
        "Largest max_tokens / max_completion_tokens accepted for a model whose "
        "`[models.<name>]` entry sets no max_tokens; more is a 400.",
        commands=(),
        ge=1,
    )
    max_n: int = setting(
        8, "Largest `n` (choices per request) accepted; more is a 400.", commands=(), ge=1
    )
    models_file: str = setting(
        "",
        "TOML file with aliases, per-model defaults and per-model limits "
        "(docs/routing.md); re-read when it changes.",
    )
    aliases: Annotated[list[str], NoDecode] = setting(
        default_factory=list, description="Model aliases `alias=model`, comma-separated."
    )
    ledger_maxlen: int = setting(
        100_000, "Entries kept in the usage ledger stream (all tenants).", commands=(), ge=1
    )
    reservation_lease: float = setting(
        900.0, "Seconds after which an unreleased concurrency slot is reclaimed.", commands=()
    )
    quota_leases: bool = setting(
        True,
        "Admit a hot tenant's interactive requests from budget leased from Redis, with no "
        "Redis call per request (docs/routing.md, 'Leased budget'); off: one call each.",
        commands=(),
    )
    quota_lease_window: float = setting(
        0.5,
        "Seconds a lease is spent for (its units count as used at its end); at most 5.",
        commands=(),
        gt=0,
        le=5,
    )
    quota_slot_grace: float = setting(
        30.0,
        "Seconds a lease's unused concurrency slots stay held in Redis past the lease's end "
        "when its replica cannot give them back (it died): the dead replica's share of "
        "max_concurrent comes back this long after. A running job's slot is moved to its own "
        "reservation lease well within it.",
        commands=(),
        ge=1,
        le=600,
    )

    _split = field_validator("trusted_tenants", "aliases", mode="before")(split_commas)
