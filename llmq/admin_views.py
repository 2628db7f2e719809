"""How `llmq tenants|keys|usage|prices` show their records to a person: tables for lists,
cards for one record, human times, `unlimited` for a limit of 0, never a key's hash.
(`--json` prints the records themselves instead.)"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from llmq.api.tenancy import Price, Tenant
from llmq.api.tenancy.models import ApiKey, KeySettings, UsageRow
from llmq.tables import Column, card, limit, models, moment, since, size, table

TENANT_COLUMNS: list[Column] = [
    ("NAME", 0, "<"),
    ("STATUS", 0, "<"),
    ("PRIORITY", 0, "<"),
    ("RPM", 0, ">"),
    ("TPM", 0, ">"),
    ("CONCURRENT", 0, ">"),
    ("MODELS", 0, "<"),
    ("CREATED", 0, "<"),
]
KEY_COLUMNS: list[Column] = [
    ("ID", 0, "<"),
    ("PREFIX", 0, "<"),
    ("LABEL", 0, "<"),
    ("OWNER", 0, "<"),
    ("MODELS", 0, "<"),
    ("LIMITS", 0, "<"),
    ("CREATED", 0, "<"),
    ("EXPIRES", 0, "<"),
    ("LAST USED", 0, "<"),
]
PRICE_COLUMNS: list[Column] = [
    ("MODEL", 0, "<"),
    ("INPUT", 0, ">"),
    ("OUTPUT", 0, ">"),
    ("CACHED INPUT", 0, ">"),
    ("CACHE WRITE", 0, ">"),
]
_LIMITS = ("rpm", "tpm", "max_concurrent", "daily_tokens", "monthly_tokens")


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts)) if ts else "-"


def tenants(rows: Sequence[Tenant]) -> list[str]:
    if not rows:
        return ["no tenants (create one: llmq tenants create NAME)"]
    return table(
        TENANT_COLUMNS,
        [
            [
                t.name,
                t.status,
                t.priority,
                limit(t.rpm),
                limit(t.tpm),
                limit(t.max_concurrent),
                models(t.models),
                _day(t.created_at),
            ]
            for t in rows
        ],
    )


def tenant(t: Tenant) -> list[str]:
    return card(
        [
            ("name", t.name),
            ("id", t.id or "-"),
            ("status", t.status),
            ("priority", t.priority),
            ("models", models(t.models)),
            ("rpm", limit(t.rpm)),
            ("tpm", limit(t.tpm)),
            ("max concurrent", limit(t.max_concurrent)),
            ("daily tokens", limit(t.daily_tokens)),
            ("monthly tokens", limit(t.monthly_tokens)),
            ("spend budget", limit(t.spend_budget_usd, " USD/month")),
            ("storage", size(t.storage_bytes) if t.storage_bytes else "unlimited"),
            ("created", moment(t.created_at)),
        ]
    )


def key_limits(k: KeySettings) -> str:
    """The key's own limits (`rpm 60, tpm 20,000`); `tenant's` when it has none."""
    own = [
        f"{name.replace('_', ' ')} {limit(getattr(k, name))}"
        for name in _LIMITS
        if getattr(k, name)
    ]
    if k.spend_budget_usd:
        own.append(f"spend {limit(k.spend_budget_usd, ' USD')}")
    if k.priority:
        own.append(f"priority {k.priority}")
    return ", ".join(own) or "tenant's"


def keys(rows: Sequence[ApiKey], now: float | None = None) -> list[str]:
    if not rows:
        return ["no keys (create one: llmq keys create TENANT)"]
    return table(
        KEY_COLUMNS,
        [
            [
                k.id,
                k.prefix + "…",
                k.label or "-",
                k.owner or "-",
                models(k.models, "tenant's"),
                key_limits(k),
                _day(k.created_at),
                since(k.expires_at, now),
                since(k.last_used_at, now),
            ]
            for k in rows
        ],
    )


def new_key(k: ApiKey, plaintext: str) -> list[str]:
    return [
        *card(
            [
                ("key", plaintext),
                ("id", k.id),
                ("tenant", k.tenant),
                ("label", k.label or "-"),
                ("owner", k.owner or "-"),
                ("models", models(k.models, "the tenant's")),
                ("limits", key_limits(k)),
                ("expires", moment(k.expires_at, never="never")),
            ]
        ),
        "",
        "The key is shown this once; llmq keeps only its hash.",
    ]


def usage(rows: Sequence[UsageRow], by: str) -> list[str]:
    if not rows:
        return [f"no usage by {by} in these days"]
    columns: list[Column] = [
        ("DAY", 0, "<"),
        (by.upper(), 0, "<"),
        ("REQUESTS", 0, ">"),
        ("FAILED", 0, ">"),
        ("PROMPT", 0, ">"),
        ("CACHED", 0, ">"),
        ("COMPLETION", 0, ">"),
        ("COST USD", 0, ">"),
    ]
    body = [
        [
            r.day,
            r.model,
            f"{r.requests:,}",
            f"{r.failed:,}",
            f"{r.prompt_tokens:,}",
            f"{r.cached_tokens:,}",
            f"{r.completion_tokens:,}",
            f"{r.cost_usd:.4f}",
        ]
        for r in rows
    ]
    total = [
        "total",
        "",
        f"{sum(r.requests for r in rows):,}",
        f"{sum(r.failed for r in rows):,}",
        f"{sum(r.prompt_tokens for r in rows):,}",
        f"{sum(r.cached_tokens for r in rows):,}",
        f"{sum(r.completion_tokens for r in rows):,}",
        f"{sum(r.cost_usd for r in rows):.4f}",
    ]
    return table(columns, [*body, total])


def _usd(value: float | None, default: str = "= input") -> str:
    return default if value is None else f"{value:g}"


def prices(rows: Mapping[str, Price]) -> list[str]:
    if not rows:
        return ["no prices (every model costs nothing; set one: llmq prices set MODEL ...)"]
    lines = table(
        PRICE_COLUMNS,
        [
            [
                model,
                _usd(p.input_per_1m),
                _usd(p.output_per_1m),
                _usd(p.cached_input_per_1m),
                _usd(p.cache_write_per_1m),
            ]
            for model, p in rows.items()
        ],
    )
    return [*lines, "", "USD per 1M tokens"]
