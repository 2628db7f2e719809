"""Rename a tenant's Redis keys from the layout before Cluster hash tags (`llmq:q:acme:...`)
to the tagged one (`llmq:q:{acme}:...`, `names.tenant_tag`), in place.

Run once, with every api stopped, on the single server (or Sentinel master) the old version
used: `python -m llmq.redis_keys [--dry-run]` (connection from `LLMQ_REDIS_*`, as the api).
Tenants, keys, open quota windows, budgets, usage history and ledgers keep working; a key
whose new name already exists is left alone and reported. TTLs are kept (RENAME keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field

from redis.asyncio import Redis

from llmq.api.tenancy.client import connect_with
from llmq.schemas import names
from llmq.schemas.settings import ConnectionSettings

_OLD = re.compile(
    rf"^{re.escape(names.REDIS_PREFIX)}(tenant|q|usage|ledger):([A-Za-z0-9._@-]+)(:.*)?$"
)
"""A per-tenant key without a hash tag (tenant names never hold `:` or braces)."""
_RESERVATION_FIELDS = ("win", "day", "month")
"""Fields of a reservation hash that name other keys of its tenant."""


def tagged_name(key: str) -> str | None:
    """The hash-tagged name of an old per-tenant key; None for any other key."""
    match = _OLD.match(key)
    if not match:
        return None
    kind, tenant, rest = match.groups()
    return f"{names.REDIS_PREFIX}{kind}:{names.tenant_tag(tenant)}{rest or ''}"


@dataclass
class Renamed:
    renamed: int = 0
    conflicts: list[str] = field(default_factory=list)


async def migrate(redis: Redis, *, dry_run: bool = False) -> Renamed:
    """Rename every old per-tenant key; reservation hashes also get their key fields
    rewritten, so a release after the upgrade still reconciles the reserved windows."""
    done = Renamed()
    async for key in redis.scan_iter(match=f"{names.REDIS_PREFIX}*", count=1000):
        new = tagged_name(str(key))
        if new is None:
            continue
        if dry_run:
            done.renamed += 1
            continue
        if not await redis.renamenx(key, new):
            done.conflicts.append(str(key))
            continue
        done.renamed += 1
        if ":r:" in new:
            values = await redis.hmget(new, list(_RESERVATION_FIELDS))
            fixed = {
                f: tagged_name(str(v))
                for f, v in zip(_RESERVATION_FIELDS, values, strict=True)
                if v
            }
            if any(fixed.values()):
                await redis.hset(new, mapping={f: v for f, v in fixed.items() if v})
    return done


async def _main(dry_run: bool) -> int:
    redis = connect_with(ConnectionSettings(), timeout=10.0)
    try:
        done = await migrate(redis, dry_run=dry_run)
    finally:
        await redis.aclose()
    verb = "would rename" if dry_run else "renamed"
    print(f"{verb} {done.renamed} keys")
    for key in done.conflicts:
        print(f"left alone (its new name exists already): {key}", file=sys.stderr)
    return 1 if done.conflicts else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq.redis_keys", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="count, change nothing")
    return asyncio.run(_main(parser.parse_args(argv).dry_run))


if __name__ == "__main__":
    raise SystemExit(main())
