"""Reserve and release a request's quota: one Lua script each, all state in Redis.

Every api replica shares the counters, so the limits are exact across processes: a request
is counted (RPM), its prompt + max_tokens held (TPM, daily, monthly, spend) and a
concurrency slot taken in one atomic step — for its tenant and, when it came with an API
key that has limits of its own, for that key too — and its release replaces the held tokens
with the real ones. RPM and TPM are GCRA rates (no fixed minute window: see quota.lua).
A slot carries a lease: if its api dies before releasing, the next
reservation of the tenant reaps it once the lease has run out; work that outlives the lease
(async jobs, batch lines) has it renewed (`renew`, driven by `api.reservations`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from llmq.api.tenancy.client import is_cluster
from llmq.api.tenancy.errors import QuotaBackendDown, backend_guard
from llmq.api.tenancy.lease_book import book_call, fold_args, folded_script
from llmq.api.tenancy.models import QuotaDecision
from llmq.api.tenancy.periods import periods
from llmq.api.tenancy.pipeline import ScriptPipe
from llmq.api.tenancy.quota_reply import decision_of
from llmq.api.tenancy.renewals import RENEW_BATCH as RENEW_BATCH
from llmq.api.tenancy.renewals import RESERVATION_GRACE, Renewals
from llmq.api.tenancy.script_keys import ScriptKeys
from llmq.schemas import names

log = logging.getLogger(__name__)

DEFAULT_LEASE = 900.0
"""Seconds a slot is held without a release; above the api's max deadline (600 s)."""
DEFAULT_LEDGER_MAXLEN = 100_000
DEFAULT_TENANT_LEDGER_MAXLEN = 10_000
DEFAULT_LEDGER_MAX_AGE = 90 * 86_400.0
DEFAULT_USAGE_TTL_DAYS = 400
MAX_USERS_PER_DAY = 10_000
"""End users (the request's `user` field) booked per tenant and UTC day; later new ones of
that day are booked together as `(other)`, so a client cannot grow Redis without bound."""
MAX_USER_CHARS = 64
"""A longer `user` value is cut to this many characters before it is booked."""


@dataclass(frozen=True, slots=True)
class Ending:
    """One job's end, as `Quota.release` books it."""

    tenant: str
    model: str
    job_id: str
    prompt_tokens: int
    completion_tokens: int
    failed: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache: str = ""
    """'hit' or 'join': answered by the response cache, booked as such at `cache_price`."""
    cache_price: float = 0.0
    lease: str = ""
    """Admitted from a lease: its ticket (`lease_book.lua` makes the record first, in the
    same script call)."""


def _script(name: str) -> str:
    return resources.files("llmq.api.tenancy").joinpath(name).read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Quota(Renewals):
    """The per-request quota check; one instance per api process, sharing its Redis client."""

    def __init__(
        self,
        redis: Redis,
        *,
        lease: float = DEFAULT_LEASE,
        ledger_maxlen: int = DEFAULT_LEDGER_MAXLEN,
        tenant_ledger_maxlen: int = DEFAULT_TENANT_LEDGER_MAXLEN,
        ledger_max_age: float = DEFAULT_LEDGER_MAX_AGE,
        usage_ttl_days: int = DEFAULT_USAGE_TTL_DAYS,
        max_users_per_day: int = MAX_USERS_PER_DAY,
    ) -> None:
        self._redis = redis
        self._lease = lease
        self._max_users = max_users_per_day
        self._ledger_maxlen = ledger_maxlen
        self._tenant_ledger_maxlen = tenant_ledger_maxlen
        self._ledger_max_age_ms = _ms(ledger_max_age)
        self._usage_ttl = usage_ttl_days * 86_400.0
        self._cluster = is_cluster(redis)
        """A script may touch one tenant's keys only (one hash slot, `names.tenant_tag`)."""
        piped = ScriptPipe.serves(redis)
        self.pipe = ScriptPipe(redis) if piped else None
        """The reserves' (and renewals') calls, auto-pipelined; None in a Cluster: redis-py's
        path per call."""
        self.release_pipe = ScriptPipe(redis) if piped else None
        """The folded releases', on a connection of their own: a reserve (on a request's
        path) never waits behind a release batch in flight, nor a release behind reserves."""
        self._keys = ScriptKeys(self._cluster)
        # register_script: EVALSHA, and SCRIPT LOAD only when the server does not know it yet.
        self._reserve = redis.register_script(_script("quota.lua"))
        self._release = redis.register_script(_script("release.lua"))
        self._renew = redis.register_script(_script("renew.lua"))
        self._book_release = redis.register_script(folded_script())
        """`lease_book.lua` + `release.lua`: a lease-admitted job's booking, one call."""

    async def reserve(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        job_id: str,
        *,
        now: float | None = None,
        lease: float | None = None,
        key_id: str = "",
        user: str = "",
        lease_wish: tuple[int, float, float] = (0, 0.0, 0.0),
        lease_only: bool = False,
    ) -> QuotaDecision:
        """Check every limit and, if all pass, hold the request's share. Raises
        `QuotaBackendDown` when Redis is unreachable.

        `max_tokens` must be a number: pass the model's default cap when the client sent none.
        Calling it again with the same `job_id` answers "allowed" without counting twice.
        `key_id`: the API key the request came with; its own limits apply too, and a key
        revoked or expired since the caller cached it is refused (`invalid_api_key`).
        `user`: the request's end user, booked at release (cut to `MAX_USER_CHARS`).
        `lease_wish`: (requests, until, slots until): ask for a lease too
        (`api.tenancy.leases`). `lease_only`: ask for that lease alone, ahead of need
        (`job_id` names the lease): the request is checked but nothing of it is held.
        """
        if lease_only and (self._cluster or lease_wish[1] <= 0):
            raise ValueError("a lease alone is asked for with a lease wish, outside a Cluster")
        now = time.time() if now is None else now
        lease = self._lease if lease is None else lease
        p = periods(now)
        keys = self._keys.reserve(tenant, key_id, job_id, p.day, p.month)
        args: list[str | int] = [
            model,
            max(0, int(prompt_tokens)),
            max(0, int(max_tokens)),
            job_id,
            _ms(now),
            _ms(lease),
            key_id,
            _ms(p.day_end),
            _ms(p.month_end),
            _ms(lease + RESERVATION_GRACE),
            user[:MAX_USER_CHARS],
        ]
        if self._cluster:  # the price table is in another slot: read it first, pass it in
            with backend_guard():
                price = await self._redis.hget(names.PRICES_KEY, model)
            args.append("" if price is None else _text(price))
        elif lease_wish[1] > 0:  # leases on: maybe a lease, and the reaper
            until = lease_wish[1]
            args += ["-", _ms(until), lease_wish[0], _ms(lease_wish[2]), _ms(until + lease)]
            keys.append(names.reservation_key(tenant, "#leases"))
            if lease_only:
                args.append("1")
        reply = _text(await self._call(self._reserve, keys, args))
        return decision_of(reply, tenant, model, job_id)

    async def release(
        self,
        tenant: str,
        model: str,
        job_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        failed: bool = False,
        now: float | None = None,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache: str = "",
        cache_price: float = 0.0,
        lease: str = "",
    ) -> bool:
        """End a job: free its slot, book the real usage in place of the reservation, add
        usage and a ledger entry. Call it on every end (success, error, timeout, disconnect);
        `failed=True` with zero tokens gives everything back. True only for the first call
        per job id; later calls (and jobs never reserved) change nothing but the slot.
        `cached_tokens` (cache reads) and `cache_write_tokens`, both part of
        `prompt_tokens`, are priced at the model's cached-input and cache-write prices.
        """
        ending = Ending(
            tenant,
            model,
            job_id,
            prompt_tokens,
            completion_tokens,
            failed=failed,
            cached_tokens=cached_tokens,
            cache_write_tokens=cache_write_tokens,
            cache=cache,
            cache_price=cache_price,
            lease=lease,
        )
        return await self.release_ending(ending, now)

    async def release_ending(self, ending: Ending, now: float | None = None) -> bool:
        """`release` of one job's `Ending`."""
        script, keys, args, release_args = self._ending_call(
            ending, time.time() if now is None else now
        )
        raw = _text(await self._call(script, keys, args))
        return await self._released(ending, release_args, raw)

    async def release_many(
        self, endings: Sequence[Ending], *, now: float | None = None
    ) -> list[bool | Exception]:
        """`release` of many jobs in one round trip: a pipeline of one script call per job
        (`release.lua`, or `lease_book.lua` + `release.lua` for a lease-admitted one), each
        atomic and idempotent on its own, so the result is exactly that of calling
        `release` for each. Per job: what `release` answers, or the exception it would
        raise (`QuotaBackendDown` when Redis is away: retrying is safe). In a Cluster the
        jobs' keys live in different slots: one call each, in turn."""
        now = time.time() if now is None else now
        if self._cluster or (len(endings) == 1 and self.release_pipe is None):
            out: list[bool | Exception] = []
            for e in endings:
                try:
                    out.append(await self.release_ending(e, now))
                except Exception as exc:
                    out.append(exc)
            return out
        calls = [self._ending_call(e, now) for e in endings]
        commands = [("EVALSHA", sc.sha, len(keys), *keys, *args) for sc, keys, args, _ in calls]
        try:
            with backend_guard():
                replies = await self._pipe_many(commands)
        except QuotaBackendDown as exc:
            return [exc] * len(endings)
        results: list[bool | Exception] = []
        for ending, (script, keys, args, release_args), reply in zip(
            endings, calls, replies, strict=True
        ):
            try:
                if isinstance(reply, NoScriptError):  # a restarted server: load it, once
                    reply = await self._call(script, keys, args)
                elif isinstance(reply, Exception):
                    with backend_guard():
                        raise reply
                results.append(await self._released(ending, release_args, _text(reply)))
            except Exception as exc:
                results.append(exc)
        return results

    def _ending_call(
        self, e: Ending, now: float
    ) -> tuple[AsyncScript, list[str], list[str | int], list[str | int]]:
        """The script call that books one job ending at `now`: (script, keys, arguments,
        `release.lua`'s arguments). A lease-admitted job's record is made in the same call
        (`lease_book.lua`, once per job)."""
        keys, args = self._release_call(e, now)
        if e.lease:
            try:
                book = book_call(e.tenant, e.model, e.job_id, e.lease)
            except ValueError:  # not a ticket this api reads: no record, nothing booked
                log.error("job %s: unreadable lease ticket; not booked", e.job_id)
            else:
                return (self._book_release, *fold_args(book, (keys, args)), args)
        return self._release, keys, args, args

    def _release_call(self, e: Ending, now: float) -> tuple[list[str], list[str | int]]:
        """`release.lua`'s keys and arguments for one job ending at `now`."""
        p = periods(now)
        tenant = e.tenant
        keys = self._keys.release(tenant, e.job_id, p.day)
        args: list[str | int] = [
            e.job_id,
            max(0, int(e.prompt_tokens)),
            max(0, int(e.completion_tokens)),
            1 if e.failed else 0,
            _ms(now),
            _ms(p.day_end + self._usage_ttl),
            self._ledger_maxlen,
            tenant,
            e.model,
            max(0, int(e.cached_tokens)),
            max(0, int(e.cache_write_tokens)),
            self._max_users,
            e.cache,
            repr(float(e.cache_price)),
            self._tenant_ledger_maxlen,
            self._ledger_max_age_ms,
        ]
        return keys, args

    async def _released(self, e: Ending, args: list[str | int], raw: str) -> bool:
        if self._cluster and raw.startswith("1|"):
            await self._global_ledger(
                e.tenant, e.model, e.job_id, args, e.failed, raw=raw.split("|")
            )
        return raw.startswith("1|")

    async def _global_ledger(
        self,
        tenant: str,
        model: str,
        job_id: str,
        args: list[str | int],
        failed: bool,
        *,
        raw: list[str],
    ) -> None:
        """In a Cluster the global ledger is in another slot than the tenant's keys: the
        entry `release.lua` wrote to the tenant's ledger is appended to it right after."""
        entry: dict[Any, Any] = {
            "ts": args[4],
            "tenant": tenant,
            "model": model,
            "job": job_id,
            "prompt": args[1],
            "completion": args[2],
            "reserved": raw[2],
            "cost": raw[1],
            "status": "failed" if failed else "ok",
        }
        if args[12]:  # a response-cache answer, marked as release.lua marks it
            entry.update({"cached": "true", "cache": args[12], "cached_tokens": args[9]})
        with backend_guard():
            await self._redis.xadd(
                names.LEDGER_KEY, entry, maxlen=self._ledger_maxlen, approximate=True
            )

    async def _call(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """`EVALSHA` through the pipe (or, in a Cluster, straight on the client: redis-py's
        `Script.__call__` adds an import, two tuple copies and two call layers per request);
        a `NOSCRIPT` reply (a restarted or flushed server) loads the script and calls again,
        through the pipe too: the callers of one batch that all met it stay one batch."""
        pipe = self.pipe
        with backend_guard():
            if pipe is None:
                try:
                    return await self._redis.execute_command(
                        "EVALSHA", script.sha, len(keys), *keys, *args
                    )
                except NoScriptError:
                    return await script(keys=keys, args=args)
            try:
                return await pipe.execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await pipe.execute("SCRIPT", "LOAD", script.script)
                return await pipe.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _pipe_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands' replies in order, an error reply as its exception: through the
        release pipe, or a redis-py pipeline where there is none."""
        if self.release_pipe is not None:
            return await self.release_pipe.execute_many(commands)
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    @property
    def redis(self) -> Redis:
        return self._redis

    @property
    def lease(self) -> float:
        """Seconds a reservation is held without a release or a renewal."""
        return self._lease

    async def inflight(self, tenant: str, *, now: float | None = None) -> int:
        """Slots held right now (leases not yet run out)."""
        now = time.time() if now is None else now
        with backend_guard():
            return int(await self._redis.zcount(names.inflight_key(tenant), f"({_ms(now)}", "+inf"))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
