"""The records of the tenancy layer: tenants, API keys, prices, quota decisions, usage.

Plain msgspec structs, no I/O. Limits of 0 mean unlimited; an empty `models` list allows all.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
"""No `:` (it separates Redis key parts), no spaces, at most 64 characters."""

TenantName = Annotated[str, Meta(pattern=TENANT_NAME_PATTERN)]
Count = Annotated[int, Meta(ge=0)]
Usd = Annotated[float, Meta(ge=0)]
TenantStatus = Literal["active", "suspended"]
Priority = Literal["high", "normal", "low"]
"""A priority class: a model's queue starts a higher class's requests first."""
KeyPriority = Literal["", "high", "normal", "low"]
"""A key's class; "" = its tenant's. A key never ranks above its tenant."""
PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
NORMAL_RANK = PRIORITY_RANK["normal"]


def priority_rank(tenant: str, key: str = "") -> int:
    """The rank a request is served at: its key's class, capped by its tenant's."""
    ceiling = PRIORITY_RANK.get(tenant, NORMAL_RANK)
    return min(ceiling, PRIORITY_RANK.get(key, ceiling))


Reason = Literal[
    "ok",
    "rate_limit_exceeded",  # rpm, tpm or concurrency: retry soon
    "insufficient_quota",  # daily / monthly tokens or spend budget: retry next period
    "suspended",
    "model_not_allowed",
    "unknown_tenant",
    "invalid_api_key",  # the key was revoked or expired after the caller cached it
]
LimitName = Literal[
    "",
    "key",  # with model_not_allowed: the key's own model list refused it
    "rpm",
    "tpm",
    "max_concurrent",
    "daily_tokens",
    "monthly_tokens",
    "spend_budget_usd",
    "key_rpm",
    "key_tpm",
    "key_max_concurrent",
    "key_daily_tokens",
    "key_monthly_tokens",
    "key_spend_budget_usd",
]
"""`key_*`: the API key's own limit (inside the tenant's) refused the request."""


class Tenant(Struct, kw_only=True, forbid_unknown_fields=True):
    name: TenantName
    id: str = ""
    """Immutable, random, given at creation: namespaces the tenant's files, jobs and
    batches, so a new tenant of a deleted one's name never sees its data. Empty for a
    tenant created before ids existed (see docs/tenants.md, "Tenant ids")."""
    status: TenantStatus = "active"
    models: list[str] = []
    """Models this tenant may call; empty = all."""
    rpm: Count = 0
    tpm: Count = 0
    """Tokens per minute, counted as prompt + max_tokens until the job ends, then actual."""
    max_concurrent: Count = 0
    daily_tokens: Count = 0
    """Per UTC day."""
    monthly_tokens: Count = 0
    """Per UTC calendar month."""
    spend_budget_usd: Usd = 0.0
    """Per UTC calendar month, priced with the price table."""
    storage_bytes: Count = 0
    """Bytes of files (`/v1/files`, batch outputs included) the tenant may keep at once."""
    priority: Priority = "normal"
    """Its requests' class on a busy model's queue (docs/routing.md, "Priority classes")."""
    created_at: float = 0.0


TENANT_MUTABLE_FIELDS = frozenset(
    {
        "status",
        "models",
        "rpm",
        "tpm",
        "max_concurrent",
        "daily_tokens",
        "monthly_tokens",
        "spend_budget_usd",
        "storage_bytes",
        "priority",
    }
)


class KeySettings(Struct, kw_only=True):
    """What an operator sets on a key: who it is for, until when, and limits of its own,
    applied inside its tenant's (a request must pass both). 0 = no limit of the key's own."""

    label: str = ""
    owner: str = ""
    """A person, team or application the key is for (free text, shown in listings)."""
    expires_at: float = 0.0
    """Unix seconds; from then on the key is refused like a revoked one. 0 = never."""
    models: list[str] = []
    """Models this key may call, within the tenant's; empty = the tenant's."""
    rpm: Count = 0
    tpm: Count = 0
    max_concurrent: Count = 0
    daily_tokens: Count = 0
    monthly_tokens: Count = 0
    spend_budget_usd: Usd = 0.0
    priority: KeyPriority = ""
    """The class of this key's requests, at most its tenant's; "" = the tenant's."""
    cache_ttl: Annotated[float, Meta(ge=0)] = 0.0
    """Seconds this key's answers stay in the response cache (docs/cache.md), on every model
    it calls; 0 = the model table decides."""


class KeyInput(KeySettings, kw_only=True, forbid_unknown_fields=True):
    """`KeySettings` as the admin API accepts them (strict: a typo is a 400)."""


class ApiKey(KeySettings, kw_only=True):
    """What is stored about a key: never the secret, only its SHA-256 and a display prefix."""

    id: str
    tenant: str
    prefix: str
    """The first characters of the key (`sk-llmq-AbCd`), so a person can tell keys apart."""
    sha256: str
    created_at: float = 0.0
    last_used_at: float = 0.0
    """Unix seconds a job of this key last ended (0 = never). Not part of the stored record:
    `TenantStore.list_keys` fills it from the last-used hash the job's release stamps."""

    def expired(self, now: float) -> bool:
        return 0 < self.expires_at <= now


class Price(Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens. A model without a price costs nothing."""

    input_per_1m: Usd = 0.0
    output_per_1m: Usd = 0.0
    cached_input_per_1m: Usd | None = None
    """Prompt tokens the upstream served from its cache (`cached_tokens`); None = input price."""
    cache_write_per_1m: Usd | None = None
    """Prompt tokens written to the upstream's cache (Anthropic's cache writes, reported as
    `cache_creation_tokens`); None = input price."""

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached: int = 0, written: int = 0
    ) -> float:
        cached = min(max(cached, 0), prompt_tokens)
        written = min(max(written, 0), prompt_tokens - cached)
        cached_price = _or(self.cached_input_per_1m, self.input_per_1m)
        write_price = _or(self.cache_write_per_1m, self.input_per_1m)
        return (
            (prompt_tokens - cached - written) * self.input_per_1m
            + cached * cached_price
            + written * write_price
            + completion_tokens * self.output_per_1m
        ) / 1e6


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class Reservation(Struct, kw_only=True):
    """What an allowed `reserve` holds until `release`."""

    tenant: str
    model: str
    job_id: str
    reserved_tokens: int
    reserved_usd: float
    lease_until: float
    """Unix seconds; after it the concurrency slot is reaped even without a release."""


class QuotaDecision(Struct, kw_only=True):
    """The answer of one `reserve`, with the values for the `x-ratelimit-*` headers.

    `None` limits are unlimited (send no header for them).
    """

    allowed: bool
    reason: Reason = "ok"
    limit: LimitName = ""
    """Which limit refused the request."""
    retry_after: float = 0.0
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float = 0.0
    reservation: Reservation | None = None
    duplicate: bool = False
    """The job id already held a reservation; nothing new was counted."""
    lease: tuple[int, int, str, str, bool, float, float] = (0, 0, "0", "0", False, 0.0, 0.0)
    """A lease granted with it (`api.tenancy.leases`): requests, slots, ms per TPM token
    of the tenant and of the key ("0": no TPM limit), whether it holds day, month and
    spend budget, the input and output price per 1M tokens."""

    @property
    def http_status(self) -> int:
        """200 allowed; 429 rate limits and budgets; 403 suspended, model or tenant refused."""
        if self.allowed:
            return 200
        if self.reason in ("rate_limit_exceeded", "insufficient_quota"):
            return 429
        if self.reason == "invalid_api_key":
            return 401
        return 403

    def headers(self) -> dict[str, str]:
        """`x-ratelimit-*` (only for set limits) and, when refused, `Retry-After`."""
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests or 0)
            out["x-ratelimit-reset-requests"] = _duration(self.reset_requests)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens or 0)
            out["x-ratelimit-reset-tokens"] = _duration(self.reset_tokens)
        if not self.allowed and self.retry_after > 0:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return out


def _duration(seconds: float) -> str:
    """OpenAI's style: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


class UsageRow(Struct, kw_only=True):
    tenant: str
    day: str
    """UTC, YYYY-MM-DD."""
    model: str
    """The model; in rows per key or per end user, the key id or the user."""
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Part of `prompt_tokens` served from the upstream's cache."""
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    """Requests of `requests` answered by llmq's response cache (a hit or a joined job)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LedgerEntry(Struct, kw_only=True):
    """One released job, as appended to the ledger stream."""

    id: str
    """The stream entry id (`<ms>-<seq>`)."""
    ts: float
    tenant: str
    model: str
    job_id: str
    prompt_tokens: int
    completion_tokens: int
    reserved_tokens: int
    cost_usd: float
    status: Literal["ok", "failed"]
    cached_tokens: int = 0
    key_id: str = ""
    user: str = ""
    cached: bool = False
    """Answered by llmq's response cache, not by a job of its own (docs/cache.md)."""
    cache: str = ""
    """How: `hit` (a stored answer) or `join` (an identical job that was running)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str | float) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h`, `30d` or `2w`; ValueError otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        unit = _UNITS.get(raw[-1:], 0)
        number = raw[:-1] if unit else raw
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            raise ValueError(f"not a duration: {text!r} (e.g. 3600, 30m, 12h, 30d)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def key_input(data: dict[str, object], now: float) -> KeySettings:
    """A key's settings from admin input: `KeyInput` fields, plus `expires_in` (a duration,
    see `parse_duration`) as a shorthand for `expires_at`. Raises ValueError or
    msgspec.ValidationError on bad input."""
    data = dict(data)
    expires_in = data.pop("expires_in", None)
    cache_ttl = data.get("cache_ttl")
    if isinstance(cache_ttl, str):  # `1h` as well as seconds
        try:
            data["cache_ttl"] = parse_duration(cache_ttl)
        except ValueError as exc:
            raise ValueError(f"cache_ttl: {exc}") from None
    checked = msgspec.convert(data, KeyInput)
    if expires_in is not None:
        checked.expires_at = now + parse_duration(expires_in)  # type: ignore[arg-type]
    return checked
