"""`llmq tenants|keys|usage|prices`: the admin operations, straight against Redis.

llmq tenants create acme --rpm 600 --tpm 200000 --max-concurrent 8 --models echo,gpt-4
llmq keys create acme            # prints the key once; Redis keeps only its SHA-256
llmq keys create acme --rpm 60 --tpm 20000 --expires-in 30d --models a,b --label ci --owner ops
llmq usage acme --days 7 [--by model|key|user]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from llmq import admin_views as views
from llmq import event_loop
from llmq.api.tenancy import (
    Price,
    QuotaBackendDown,
    Tenant,
    TenantExists,
    TenantStore,
    UnknownTenant,
    UsageReader,
    connect_with,
)
from llmq.api.tenancy.client import redis_target
from llmq.api.tenancy.models import key_input
from llmq.cli_errors import invalid_input, redis_failure
from llmq.dispatcher.connection import has_password, redact_url
from llmq.schemas.settings import ConnectionSettings, Settings

LIMIT_FLAGS = {
    "rpm": int,
    "tpm": int,
    "max_concurrent": int,
    "daily_tokens": int,
    "monthly_tokens": int,
    "spend_budget_usd": float,
    "storage_bytes": int,
}

ANNOUNCE_TIMEOUT = 2.0
"""Seconds to reach NATS and announce a change to the apis."""

Command = Callable[[argparse.Namespace, TenantStore, UsageReader], Awaitable["Shown"]]


def _print(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


@dataclass
class Shown:
    """What a command prints: `value` as JSON with `--json`, else `lines` for a person."""

    value: Any
    lines: list[str]
    changed: str = ""
    """The tenant whose record or keys the command changed: every api is told to forget
    what it cached of it (`api.auth_changes`)."""


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {
        name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name, None) is not None
    }
    if args.models is not None:
        changes["models"] = [m for m in args.models.split(",") if m]
    if getattr(args, "priority", None) is not None:
        changes["priority"] = args.priority
    return changes


async def _tenants(args: argparse.Namespace, store: TenantStore, _usage: UsageReader) -> Shown:
    action, name = args.action, args.name
    if action == "list":
        found = await store.list_tenants()
        return Shown(found, views.tenants(found))
    if not name:
        raise ValueError(f"`llmq tenants {action}` needs a tenant NAME")
    if action == "delete":
        if not await store.delete(name):
            raise UnknownTenant(name)
        # Its files, jobs and batches are unreachable at once (a new tenant of the name gets
        # a new id); the api's sweeper deletes them (the admin API does so at once).
        return Shown({"deleted": name}, [f"deleted tenant {name}"], changed=name)
    if action == "create":
        tenant = await store.create(msgspec.convert({"name": name, **_limits(args)}, Tenant))
    elif action == "update":
        tenant = await store.update(name, _limits(args))
    elif action == "suspend":
        tenant = await store.suspend(name)
    elif action == "resume":
        tenant = await store.resume(name)
    else:
        found_one = await store.get(name)
        if found_one is None:
            raise UnknownTenant(name)
        return Shown(found_one, views.tenant(found_one))
    return Shown(tenant, views.tenant(tenant), changed=name)


async def _keys(args: argparse.Namespace, store: TenantStore, _usage: UsageReader) -> Shown:
    if await store.get(args.tenant) is None:
        raise UnknownTenant(args.tenant)
    if args.action == "create":
        data = _limits(args) | {"label": args.label, "owner": args.owner}
        if args.expires_in is not None:
            data["expires_in"] = args.expires_in
        if args.cache_ttl is not None:
            data["cache_ttl"] = args.cache_ttl
        try:
            settings = key_input(data, time.time())
        except msgspec.ValidationError:
            raise
        except ValueError as exc:  # only the durations are parsed beyond msgspec's checks
            text = str(exc)
            flag = "--cache-ttl" if text.startswith("cache_ttl: ") else "--expires-in"
            raise ValueError(f"{flag} is not valid: {text.removeprefix('cache_ttl: ')}") from None
        plaintext, record = await store.create_key(args.tenant, settings=settings)
        return Shown(
            {**msgspec.to_builtins(record), "key": plaintext}, views.new_key(record, plaintext)
        )
    if args.action == "list":
        found = await store.list_keys(args.tenant)
        return Shown(found, views.keys(found))
    if not args.key_id:
        raise ValueError("`llmq keys revoke TENANT KEY_ID` needs the key id (see `keys list`)")
    if not await store.revoke_key(args.tenant, args.key_id):
        raise ValueError(
            f"tenant {args.tenant} has no key {args.key_id} (see `llmq keys list {args.tenant}`)"
        )
    said = [f"revoked key {args.key_id} of {args.tenant}"]
    return Shown({"revoked": args.key_id}, said, changed=args.tenant)


async def _usage(args: argparse.Namespace, store: TenantStore, usage: UsageReader) -> Shown:
    if await store.get(args.tenant) is None:
        raise UnknownTenant(args.tenant)
    rows = await usage.usage(args.tenant, days=args.days, by=args.by)
    return Shown(rows, views.usage(rows, args.by))


async def _prices(args: argparse.Namespace, store: TenantStore, _usage: UsageReader) -> Shown:
    if args.action == "list":
        found = await store.list_prices()
        return Shown(found, views.prices(found))
    if not args.model:
        raise ValueError(f"`llmq prices {args.action}` needs a MODEL")
    if args.action == "set":
        given = {"input_per_1m": args.input, "output_per_1m": args.output}
        if args.cached_input is not None:
            given["cached_input_per_1m"] = args.cached_input
        if args.cache_write is not None:
            given["cache_write_per_1m"] = args.cache_write
        price = await store.set_price(args.model, msgspec.convert(given, Price))
        return Shown(
            {"model": args.model, **msgspec.to_builtins(price)},
            views.prices({args.model: price}),
        )
    deleted = await store.delete_price(args.model)
    said = f"deleted the price of {args.model}" if deleted else f"{args.model} had no price"
    return Shown({"model": args.model, "deleted": deleted}, [said])


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        conn = Settings().connection
        url = args.redis_url or ""  # "": LLMQ_REDIS_SENTINELS when set, else LLMQ_REDIS_URL
        if args.redis_url and has_password(args.redis_url):
            print(
                "llmq: no password in --redis-url (a command line shows in `ps`); use "
                "LLMQ_REDIS_PASSWORD(_FILE) or LLMQ_REDIS_URL",
                file=sys.stderr,
            )
            return 2

        async def go() -> Shown:
            redis = connect_with(conn, url)
            try:
                shown = await command(args, TenantStore(redis), UsageReader(redis))
            finally:
                await redis.aclose()
            if shown.changed:
                await _announce(conn, shown.changed)
            return shown

        try:
            shown = event_loop.run(go())
        except UnknownTenant as exc:
            print(f"llmq: tenant {exc} does not exist (see `llmq tenants list`)", file=sys.stderr)
            return 1
        except TenantExists as exc:
            print(f"llmq: tenant {exc} already exists", file=sys.stderr)
            return 1
        except QuotaBackendDown as exc:
            target = url or redis_target(conn)
            sent = has_password(target) or bool(conn.secret("redis_password"))
            said = redis_failure(exc, redact_url(target), sent_password=sent)
            print(f"llmq: {said}", file=sys.stderr)
            return 2
        except msgspec.ValidationError as exc:
            print(f"llmq: {invalid_input(exc, args)}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"llmq: {exc}", file=sys.stderr)
            return 1
        if args.json:
            _print(shown.value)
        else:
            sys.stdout.write("\n".join(shown.lines) + "\n")
        return 0

    return run


async def _announce(conn: ConnectionSettings, tenant: str) -> None:
    """Tell every api on NATS (LLMQ_NATS_URL and credentials) to forget what it cached of
    `tenant`; when NATS cannot be reached the change stands and the apis see it once their
    cache expires (`key_cache_ttl`): said on stderr, not an error."""
    from llmq.api.auth_changes import announce
    from llmq.dispatcher.connection import connect, disconnect

    try:
        nc = await connect(conn.nats_url, "llmq-cli", ANNOUNCE_TIMEOUT, conn=conn, reconnect=False)
    except Exception as exc:
        print(f"llmq: {_unannounced(conn, exc)}", file=sys.stderr)
        return
    try:
        await announce(nc, tenant)
    except Exception as exc:
        print(f"llmq: {_unannounced(conn, exc)}", file=sys.stderr)
    finally:
        await disconnect(nc, ANNOUNCE_TIMEOUT)


def _unannounced(conn: ConnectionSettings, exc: Exception) -> str:
    return (
        f"the change is made, but NATS at {redact_url(conn.nats_url)} was not told "
        f"({str(exc) or type(exc).__name__}): running apis see it within their key cache "
        "time (LLMQ_KEY_CACHE_TTL)"
    )


def register(sub: Any) -> None:
    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--redis-url", default=None, help="Redis URL (env LLMQ_REDIS_URL)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    _tenants_parser(
        parser("tenants", "create, list, show, update, suspend, resume or delete tenants")
    )
    _keys_parser(parser("keys", "create, list or revoke a tenant's API keys"))
    usage = parser("usage", "a tenant's usage per day and model")
    usage.add_argument("tenant")
    usage.add_argument("--days", type=int, default=7)
    usage.add_argument(
        "--by",
        choices=["model", "key", "user"],
        default="model",
        help="rows per model, API key id or end user (the requests' `user` field)",
    )
    usage.set_defaults(handler=_runner(_usage))
    _prices_parser(parser("prices", "the model price table (USD per 1M tokens)"))


def _tenants_parser(tenants: argparse.ArgumentParser) -> None:
    tenants.add_argument(
        "action", choices=["create", "list", "show", "update", "suspend", "resume", "delete"]
    )
    tenants.add_argument("name", nargs="?")
    for flag, kind in LIMIT_FLAGS.items():
        tenants.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None)
    tenants.add_argument("--models", default=None, help="allowed models, comma-separated")
    tenants.add_argument(
        "--priority",
        default=None,
        choices=["high", "normal", "low"],
        help="class of its requests on a busy model's queue (default normal)",
    )
    tenants.set_defaults(handler=_runner(_tenants))


def _keys_parser(keys: argparse.ArgumentParser) -> None:
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("tenant")
    keys.add_argument("key_id", nargs="?")
    keys.add_argument("--label", default="")
    keys.add_argument("--owner", default="", help="who the key is for (free text)")
    keys.add_argument("--expires-in", default=None, help="e.g. 3600, 12h, 30d, 2w")
    keys.add_argument(
        "--cache-ttl", default=None, help="cache the key's answers this long, e.g. 1h"
    )
    for flag, kind in LIMIT_FLAGS.items():
        if flag != "storage_bytes":
            keys.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None)
    keys.add_argument("--models", default=None, help="models the key may use, comma-separated")
    keys.add_argument(
        "--priority",
        default=None,
        choices=["high", "normal", "low"],
        help="class of the key's requests, at most its tenant's (default: the tenant's)",
    )
    keys.set_defaults(handler=_runner(_keys))


def _prices_parser(prices: argparse.ArgumentParser) -> None:
    prices.add_argument("action", choices=["list", "set", "delete"])
    prices.add_argument("model", nargs="?")
    prices.add_argument("--input", type=float, default=0.0, help="USD per 1M input tokens")
    prices.add_argument("--output", type=float, default=0.0, help="USD per 1M output tokens")
    prices.add_argument(
        "--cached-input",
        type=float,
        default=None,
        help="USD per 1M prompt tokens read from the upstream's cache (default: --input)",
    )
    prices.add_argument(
        "--cache-write",
        type=float,
        default=None,
        help="USD per 1M prompt tokens written to the upstream's cache (default: --input)",
    )
    prices.set_defaults(handler=_runner(_prices))
