"""Settings of the response cache (docs/cache.md): where its bounds are and its key."""

from __future__ import annotations

from typing import ClassVar

from llmq.schemas.settings.base import Command, Group, setting


class CacheSettings(Group):
    """The exact response cache and the joining of identical requests in flight. A model
    opts in in the model table (`[models."m"] cache = { ttl = "1h" }`); these bound it."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    cache_max_ttl: float = setting(
        86_400.0,
        "Longest time (seconds) an answer stays cached, whatever the model table, the key "
        "or `x-llmq-cache-ttl` ask for.",
        gt=0,
    )
    cache_max_entry_bytes: int = setting(
        1_000_000, "Largest cached answer; a larger one is served but not stored.", gt=0
    )
    cache_tenant_max_bytes: int = setting(
        64_000_000,
        "Bytes of cached answers one tenant may hold; past it the entries closest to "
        "expiring are evicted.",
        gt=0,
    )
    cache_tenant_max_entries: int = setting(
        20_000,
        "Cached answers one tenant may hold; past it the entries closest to expiring are evicted.",
        gt=0,
    )
    cache_join_buffer_bytes: int = setting(
        1_000_000,
        "Frames of a running job kept for identical requests that join it late; past it "
        "no request joins that job any more.",
        gt=0,
    )
    cache_key: str = setting(
        "",
        "Key (32 bytes as 64 hex digits, or any passphrase: its SHA-256 is used) that "
        "encrypts cached answers at rest with AES-GCM; empty: stored as they are.",
        secret=True,
        repr=False,
    )
