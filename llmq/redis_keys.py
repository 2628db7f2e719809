"""Rename a tenant's Redis keys from the layout before Cluster hash tags (`llmq:q:acme:...`)
to the tagged one (`llmq:q:{acme}:...`, `names.tenant_tag`), in place.

Run once, with every api stopped, on the single server (or Sentinel master) the old version
used: `llmq redis migrate-keys [--dry-run]` (connection from `LLMQ_REDIS_*`, as the api;
`python -m llmq.redis_keys` is the same command).
Tenants, keys, open quota windows, budgets, usage history and ledgers keep working; a key
whose new name already exists is left alone and reported. TTLs are kept (RENAME keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from llmq.api.tenancy.client import connect_with, is_cluster, redis_target
from llmq.api.tenancy.errors import QuotaBackendDown, backend_guard
from llmq.cli_errors import redis_failure
from llmq.dispatcher.connection import has_password, redact_url
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


class NotOnCluster(Exception):
    """RENAME cannot move a key to another slot: migrate before moving into a Cluster."""


async def migrate(redis: Redis, *, dry_run: bool = False) -> Renamed:
    """Rename every old per-tenant key; reservation hashes also get their key fields
    rewritten, so a release after the upgrade still reconciles the reserved windows.
    `dry_run` counts what would be renamed and finds the conflicts, changing nothing."""
    if is_cluster(redis):
        raise NotOnCluster(
            "migrate the keys on the single server (or Sentinel master) the old version used, "
            "then import them into the Cluster: a rename cannot move a key to another slot"
        )
    done = Renamed()
    async for key in redis.scan_iter(match=f"{names.REDIS_PREFIX}*", count=1000):
        new = tagged_name(str(key))
        if new is None:
            continue
        if dry_run:
            if await redis.exists(new):
                done.conflicts.append(str(key))
            else:
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


async def _migrate_at(conn: ConnectionSettings, url: str, dry_run: bool) -> Renamed:
    redis = connect_with(conn, url, timeout=10.0)
    try:
        with backend_guard():
            return await migrate(redis, dry_run=dry_run)
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    """`llmq redis migrate-keys`: 0 done, 1 some keys left alone (listed), 2 no Redis."""
    conn = ConnectionSettings()
    url = args.redis_url or ""
    if url and has_password(url):
        print(
            "llmq: no password in --redis-url (a command line shows in `ps`); use "
            "LLMQ_REDIS_PASSWORD(_FILE) or LLMQ_REDIS_URL",
            file=sys.stderr,
        )
        return 2
    target = url or redis_target(conn)
    shown = redact_url(target)
    try:
        done = asyncio.run(_migrate_at(conn, url, args.dry_run))
    except QuotaBackendDown as exc:
        sent = has_password(target) or bool(conn.secret("redis_password"))
        print(f"llmq: {redis_failure(exc, shown, sent_password=sent)}", file=sys.stderr)
        return 2
    except NotOnCluster as exc:
        print(f"llmq: {shown} is a Cluster: {exc}", file=sys.stderr)
        return 2
    verb = "would rename" if args.dry_run else "renamed"
    print(f"{verb} {done.renamed} keys at {shown}")
    for key in done.conflicts:
        print(f"left alone (its new name exists already): {key}", file=sys.stderr)
    return 1 if done.conflicts else 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="count and check, change nothing")
    parser.add_argument(
        "--redis-url", default=None, help="Redis URL (default: env LLMQ_REDIS_URL / _SENTINELS)"
    )
    parser.set_defaults(handler=run)


def register(sub: Any) -> None:
    """`llmq redis migrate-keys`: the Redis maintenance commands."""
    redis = sub.add_parser("redis", help="Redis/Valkey maintenance (key migrations)")
    actions = redis.add_subparsers(dest="redis_command", required=True)
    migrate_keys = actions.add_parser(
        "migrate-keys",
        help="rename per-tenant keys to the hash-tagged names (once, every api stopped)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(migrate_keys)


def main(argv: list[str] | None = None) -> int:
    """`python -m llmq.redis_keys`: the same as `llmq redis migrate-keys`."""
    parser = argparse.ArgumentParser(
        prog="python -m llmq.redis_keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
