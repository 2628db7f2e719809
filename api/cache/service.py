"""The response cache as the engine's `Reuse` (`api.engine.reuse`): per attempt, a plan
that answers from a stored entry (a hit), follows an identical job already running (a
join), or lets the attempt queue its own job and leads it (a miss: others may join, and
its answer is stored when it ends well).

A hit or a join takes no concurrency slot and no place in the fair-share line; its quota
is reserved without a slot (RPM counts it, TPM the tokens it serves) and booked as cached
(`cache_hit_price`, its own ledger line). Failed, cut or refused answers are never stored.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from starlette.responses import Response

from llmq.api.cache.flights import Flight, Flights, FollowedRun
from llmq.api.cache.policy import (
    AGE_HEADER,
    HIT,
    JOIN,
    MISS,
    NEVER,
    SKIP,
    STATUS_HEADER,
    TTL_HEADER,
    Choice,
    cache_key,
    cacheable_kind,
    choose,
    decode_body,
    is_sampled,
)
from llmq.api.cache.replay import can_replay, replay
from llmq.api.cache.store import CacheStore, Entry
from llmq.api.cache.writes import Writes
from llmq.api.engine.attempt import answer_or_move_on
from llmq.api.engine.reuse import NOTHING, Ask, Plan
from llmq.api.engine.serving import Serving
from llmq.api.errors import ApiError
from llmq.api.model_table import ModelTable
from llmq.api.runtime import Runtime
from llmq.api.tenancy import QuotaBackendDown, TenantStore
from llmq.api.tenancy.client import connect_with
from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.admission import JobUsage, Refusal, Reservation
from llmq.schemas.frames import Done

log = logging.getLogger(__name__)

WRITE_BUFFER_ENTRIES = 16
"""Answers waiting to be written are bounded to this many of the largest size stored."""
SCOPE_TTL = 5.0
"""Seconds a tenant's scope is kept here (a deleted tenant's entries are purged anyway)."""


class _NoTicket:
    """A hit or a join holds no fair-share place."""

    def leave(self) -> None:
        return None


class ResponseCache:
    """One per api process: the store, the flights, and the accounting of what they serve."""

    def __init__(self, store: CacheStore, models: ModelTable, tenants: TenantStore) -> None:
        self.store = store
        self.models = models
        self.tenants = tenants
        self.flights = Flights()
        self.settings = store.settings
        self.writes = Writes(store, WRITE_BUFFER_ENTRIES * store.settings.cache_max_entry_bytes)
        self._scopes: dict[str, tuple[str, float]] = {}

    def plan(self, serving: Serving, ask: Ask) -> Plan:
        """Nothing to do (not even the body decoded) unless the model or the key opted in."""
        base = serving.auth.key_cache_ttl(ask.request) or self.models.cache_ttl_for(ask.model)
        if base <= 0:
            return NOTHING
        return CachePlan(self, serving, ask, base)

    async def scope(self, tenant: str) -> str | None:
        """None while the tenant store does not answer: the request goes on without the
        cache, as a failed lookup does (the quota's own rule decides whether it is served)."""
        if not tenant:
            return "_"
        kept = self._scopes.get(tenant)
        if kept is not None and kept[1] > time.monotonic():
            return kept[0]
        try:
            scope = await self.tenants.scope(tenant)
        except QuotaBackendDown:
            return None
        if len(self._scopes) > 10_000:
            self._scopes.clear()
        self._scopes[tenant] = (scope, time.monotonic() + SCOPE_TTL)
        return scope

    def choice(self, ask: Ask, base: float, body: dict[str, Any] | None) -> Choice:
        """`base`: the TTL the key or the model table gives (> 0: opted in)."""
        if body is None or not cacheable_kind(ask.kind, body):
            return NEVER
        entry = self.models.entry_for(ask.model)
        sampled_ok = entry is not None and entry.cache_sampled
        try:
            return choose(
                ask.request.headers,
                base,
                self.settings.cache_max_ttl,
                sampled_ok,
                is_sampled(ask.kind, body),
            )
        except ValueError:
            raise ApiError(
                400,
                f"`{TTL_HEADER}` must be a number of seconds",
                "invalid_header",
                param=TTL_HEADER,
            ) from None

    def hit_price(self, model: str) -> float:
        entry = self.models.entry_for(model)
        return entry.cache_hit_price if entry is not None else 0.0

    def write_later(self, flight: Flight, plan: CachePlan) -> None:
        """Store the flight's answer if it ended well (off every request's path)."""
        entry = _entry_of(flight, plan.ask)
        if entry is None or plan.choice.ttl <= 0 or not plan.scope:
            return
        self.writes.add(plan.scope, plan.digest, entry, plan.choice.ttl, plan.ask.model)

    async def lookup(self, scope: str, digest: str) -> Entry | None:
        """A stored answer, or one of this replica's still on its way to the store."""
        queued = self.writes.get(scope, digest)
        if queued is not None:
            return queued
        return await self.store.get(scope, digest)

    async def purge(self, scope: str) -> dict[str, int]:
        """Delete a tenant scope's entries, the ones on their way to the store too."""
        await self.writes.drop(scope, timeout=5.0)
        return await self.store.purge(scope)

    async def close(self, timeout: float = 5.0) -> None:
        """Let the writes under way land, then close the store's client."""
        await self.writes.close(timeout)
        await self.store.redis.aclose()


class CachePlan:
    """One attempt's way with the cache (`api.engine.reuse.Plan`)."""

    def __init__(self, cache: ResponseCache, serving: Serving, ask: Ask, base: float) -> None:
        self.cache = cache
        self.serving = serving
        self.ask = ask
        self.body = decode_body(ask.body)
        self.choice = cache.choice(ask, base, self.body)
        self.scope = ""
        self.digest = ""
        self.flight: Flight | None = None
        self.headers: dict[str, str] = {STATUS_HEADER: SKIP if self.choice is NEVER else MISS}
        ask.record.cache = self.headers[STATUS_HEADER]

    async def served(self) -> Response | None:
        if self.choice is NEVER or self.body is None:
            return None
        ask = self.ask
        scope = await self.cache.scope(ask.record.tenant)
        if scope is None:
            self.headers[STATUS_HEADER] = ask.record.cache = SKIP
            return None
        self.scope = scope
        self.digest = cache_key(self.scope, ask.model, self.body)
        flights, key = self.cache.flights, (self.digest, ask.stream)
        if self.choice.lookup:
            flight = flights.find(key)
            if flight is None:
                entry = await self.cache.lookup(self.scope, self.digest)
                if entry is not None and can_replay(entry, ask.kind, ask.stream):
                    return await self._hit(entry)
                flight = flights.find(key)  # one may have started during the lookup
            if flight is not None:
                joined = await self._join(flight)
                if joined is not None:
                    return joined
        if flights.find(key) is None:  # lead: the next identical requests join this one
            s = self.cache.settings
            limits = (
                s.cache_join_buffer_bytes,
                max(s.cache_join_buffer_bytes, s.cache_max_entry_bytes),
            )

            async def ended(flight: Flight) -> None:
                self.cache.write_later(flight, self)

            self.flight = flights.claim(key, limits, ended)
        return None

    def lead(self, run: JobRun) -> JobRun:
        """A miss: its job becomes the claimed flight's; its answer is stored when it ends."""
        if self.flight is None:
            return run
        self.flight.start(run)
        return FollowedRun(self.flight)  # type: ignore[return-value]

    async def _reserve(self, prompt: int, completion: int) -> Reservation:
        ask, serving = self.ask, self.serving
        reservation = await serving.reservations.reserve(
            ask.record.tenant,
            ask.model,
            prompt,
            completion,
            ask.record.job_id,
            key_id=serving.auth.key_id(ask.request),
            user=ask.user,
            slot=False,
        )
        if isinstance(reservation, Refusal):
            raise reservation
        return reservation

    async def _hit(self, entry: Entry) -> Response:
        ask, serving = self.ask, self.serving
        reservation = await self._reserve(entry.prompt_tokens, entry.completion_tokens)
        usage_wanted = _include_usage(self.body)
        record = ask.record
        record.cache, record.stream = HIT, ask.stream
        record.model = ask.model
        record.prompt_tokens, record.completion_tokens = (
            entry.prompt_tokens,
            entry.completion_tokens,
        )
        serving.reservations.release_later(
            reservation,
            JobUsage(
                entry.prompt_tokens,
                entry.completion_tokens,
                cache=HIT,
                cache_price=self.cache.hit_price(ask.model),
            ),
        )
        serving.observe(record)
        age = max(0, math.floor(time.time() - entry.created))
        headers = {**ask.headers, **reservation.headers, STATUS_HEADER: HIT, AGE_HEADER: str(age)}
        return replay(entry, ask.stream, usage_wanted, headers)

    async def _join(self, flight: Flight) -> Response | None:
        """Follow the flight; None when it never got its job (then this request runs its
        own)."""
        ask = self.ask
        if not flight.started.is_set():
            wait = self.serving.rt.settings.api.deadline
            try:
                await asyncio.wait_for(flight.started.wait(), wait)
            except TimeoutError:
                return None
        if flight.run is None or not flight.joinable:
            return None
        reservation = await self._reserve(ask.estimate, ask.max_tokens)
        flight.joined += 1
        job = ask.make_job(FollowedRun(flight), reservation, _NoTicket())
        job.cache, job.cache_price = JOIN, self.cache.hit_price(ask.model)
        ask.record.cache = JOIN
        headers = {**ask.headers, **reservation.headers, STATUS_HEADER: JOIN, AGE_HEADER: "0"}
        response = await answer_or_move_on(
            self.serving, job, ask.model, ask.stream, False, headers=headers
        )
        if isinstance(response, Response):
            return response
        raise ApiError(502, "the job ended without a result", "empty_response")


def _include_usage(body: dict[str, Any] | None) -> bool:
    options = (body or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


_REFUSED = (b'"refusal":"', b'"finish_reason":"content_filter"', b'"stop_reason":"refusal"')


def _entry_of(flight: Flight, ask: Ask) -> Entry | None:
    """The stored form of a flight that ended with its answer whole; None for a failed,
    cut (no end, frames dropped) or refused one."""
    last = flight.last
    if not isinstance(last, Done) or flight.base:
        return None
    frames = [ev for ev in flight.events if isinstance(ev, bytes)]
    body = bytes(last.body) if last.body else b""
    if (ask.stream and not frames) or (not ask.stream and not body):
        return None
    if last.finish_reason == "content_filter":
        return None
    if any(marker in part for part in (*frames, body) for marker in _REFUSED):
        return None
    if ask.kind == "response" and not _completed(frames, body):
        return None
    return Entry(
        kind=ask.kind,
        stream=ask.stream,
        created=time.time(),
        model=ask.model,
        frames=frames,
        body=body,
        prompt_tokens=last.usage.prompt_tokens,
        completion_tokens=last.usage.completion_tokens,
        finish_reason=last.finish_reason or "",
    )


def _completed(frames: list[bytes], body: bytes) -> bool:
    """A Responses answer that completed (not incomplete, not failed)."""
    if body:
        return b'"status":"completed"' in body
    return any(b'"type":"response.completed"' in frame for frame in frames[-3:])


def open_cache(runtime: Runtime, models: ModelTable, tenants: TenantStore) -> ResponseCache:
    """The process's cache, on a Valkey client of its own that keeps bytes as bytes."""
    conn = runtime.settings.connection
    redis = connect_with(conn, timeout=conn.redis_timeout, decode_responses=False)
    return ResponseCache(CacheStore(redis, runtime.settings.cache), models, tenants)
