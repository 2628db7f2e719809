"""Reservations: hold a job's share of its tenant's quota, and give it back exactly once.

The one path for interactive requests, async jobs and batch lines. `reserve` runs the Lua
script that checks and reserves every limit and answers a `Reservation` or a `Refusal`;
whoever ends the job calls `release` with the real usage. The interactive path releases
with `release_later`, which never blocks the response and survives cancellation (a
disconnecting client cancels the task that would release). The reservation's lease
reclaims the slot even if the api process dies before releasing.

Work may outlive the lease (an async job or a batch line waits up to a day), so every
reservation this replica made, or adopted (`adopt`: the open async jobs every replica
follows, the in-flight lines of a batch whose lease it took over), is renewed every third
of the lease, many per Redis call, until it is released — here or on any replica: a
renewal finds a released reservation gone and forgets it. See docs/tenants.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from llmq.api.lease_admission import end_leases, lease_ahead, leased_answer
from llmq.api.release_queue import ReleaseQueue
from llmq.api.tenancy import Quota, QuotaBackendDown
from llmq.api.tenancy.leases import Leases
from llmq.api.tenancy.quota import Ending
from llmq.api.tenancy.refusals import refusal_of
from llmq.api.tenancy.store_wait import StoreWait, store_down
from llmq.dispatcher.tasks import stop_task
from llmq.schemas.admission import JobUsage, Refusal, Reservation

log = logging.getLogger(__name__)

RELEASED_MEMORY = 16_384
"""How many of its latest releases a replica remembers at most (`released_here`): seconds
of traffic, ample for a worker's report that comes milliseconds after the job's end."""
RELEASED_SECONDS = 120.0
"""...and for how long: a count bound alone would fill in an hour of light traffic and
look like a leak (memory growing with every request until it does)."""


class Reservations(ReleaseQueue):
    def __init__(
        self,
        quota: Quota,
        fail_open: bool,
        leases: Leases | None = None,
        store_wait: StoreWait | None = None,
    ) -> None:
        self.quota = quota
        self.fail_open = fail_open
        self.leases = leases
        """This replica's leased budget (None: every request asks Redis)."""
        self.store_wait = store_wait
        """How long a request waits for an unreachable store (None: refused at once)."""
        ReleaseQueue.__init__(self)
        self._held: dict[tuple[str, str], None] = {}
        """(tenant, job id) of every open reservation this replica renews, oldest first."""
        self._released: OrderedDict[str, float] = OrderedDict()
        """Job id -> monotonic time of its release, oldest first (the latest releases
        Redis answered; job ids are unique across tenants)."""
        self._renewer: asyncio.Task[None] | None = None
        self._lease_ender: asyncio.Task[None] | None = None
        self.renewals = 0
        """Renewal rounds run (observability, tests)."""

    async def reserve(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        job_id: str,
        *,
        key_id: str = "",
        user: str = "",
        slot: bool = True,
        leased: bool = False,
        wait: float | None = None,
    ) -> Reservation | Refusal:
        """Hold the job's quota (and, with `key_id`, the key's own). Asking again for the
        same job id holds nothing twice. `user`: the request's end user, booked at release.
        `slot=False`: no concurrency slot (an answer from the response cache).
        `leased`: an interactive job, whose envelope carries `Reservation.lease`: it may be
        admitted from this replica's leases, with no Redis call. While Redis is away the
        request waits for it (`StoreWait`), at most `wait` s (its deadline; None: the
        store wait alone), then is refused; with `fail_open` it is served unchecked at once."""
        if not tenant:
            return Reservation(tenant, model, job_id, held=False)
        once = functools.partial(
            self._reserve_once, tenant, model, prompt_tokens, max_tokens, job_id
        )
        opts = {"key_id": key_id, "user": user, "slot": slot, "leased": leased}
        try:
            if self.store_wait is None or self.fail_open:  # fail-open: unchecked at once
                return await once(**opts)
            return await self.store_wait.run(lambda: once(**opts), wait)
        except QuotaBackendDown:
            return store_down(self.fail_open, tenant, model, job_id)

    async def _reserve_once(
        self, tenant: str, model: str, prompt: int, max_tokens: int, job_id: str, **opts: Any
    ) -> Reservation | Refusal:
        """One try of `reserve`: leases, else Redis; `QuotaBackendDown` when it is away."""
        key_id, user, slot = opts["key_id"], opts["user"], opts["slot"]
        prompt_tokens = prompt
        leases = self.leases if opts["leased"] and slot else None
        scope = (tenant, key_id, model)
        wish = (0, 0.0, 0.0)
        if leases is not None:
            now = time.time()
            taken = leases.take(scope, job_id, prompt_tokens, max_tokens, user=user, now=now)
            if taken is not None:
                ahead = leases.ahead(scope, now)
                if ahead is not None:  # the next lease, asked for off this request's path
                    size = (prompt, max_tokens)
                    self._spawn(lease_ahead(self.quota, leases, scope, size, ahead))
                return Reservation(tenant, model, job_id, headers=taken.headers, lease=taken.ticket)
            wish = leases.ask(scope, now)
        try:
            decision = await self.quota.reserve(
                tenant,
                model,
                prompt_tokens,
                max_tokens,
                job_id,
                key_id=key_id,
                user=user,
                lease=None if slot else 0.0,
                lease_wish=wish,
            )
        except QuotaBackendDown:
            if wish[0] and leases is not None:
                leases.answered(scope)
            raise
        if leases is not None:
            request = (prompt_tokens, max_tokens, user)
            answer = leased_answer(leases, scope, job_id, decision, request=request, wish=wish)
            if decision.allowed:
                self._held[(tenant, job_id)] = None
            return answer
        if not decision.allowed:
            return refusal_of(decision, model)
        if slot:  # a slotless reservation has no lease to renew
            self._held[(tenant, job_id)] = None
        return Reservation(tenant, model, job_id, headers=decision.headers())

    def adopt(self, tenant: str, job_ids: Iterable[str]) -> None:
        """Renew these reservations too (made elsewhere, e.g. by a replica that is gone)
        until they are released; one already released is dropped at the next renewal."""
        if tenant:
            for job_id in job_ids:
                self._held[(tenant, job_id)] = None

    async def release(self, reservation: Reservation, usage: JobUsage) -> None:
        """Book the real usage and free the slot. Raises `QuotaBackendDown` when Redis is
        away (the caller retries); a second release of one job id changes nothing."""
        if not reservation.held or not reservation.tenant:
            return
        key = (reservation.tenant, reservation.job_id)
        renewed = key in self._held
        self._held.pop(key, None)
        if reservation.lease and self.leases is not None:
            self.leases.done(reservation.job_id)
        try:
            await self.quota.release_ending(_ending(reservation, usage))
        except QuotaBackendDown:
            if renewed:  # the caller retries: keep the slot until it gets through
                self._held[key] = None
            raise
        self._remember(reservation.job_id)

    async def release_many(
        self, ended: Sequence[tuple[Reservation, JobUsage]]
    ) -> list[bool | Exception]:
        """`release` of each, in one Redis round trip; per job its outcome or its error."""
        held = [(r, u) for r, u in ended if r.held and r.tenant]
        renewed = {}
        leases = self.leases
        for reservation, _ in held:
            if reservation.lease and leases is not None:
                leases.done(reservation.job_id)
            key = (reservation.tenant, reservation.job_id)
            renewed[key] = key in self._held
            self._held.pop(key, None)
        endings = [_ending(r, u) for r, u in held]
        outcomes = iter(await self.quota.release_many(endings) if endings else [])
        results: list[bool | Exception] = []
        for reservation, _ in ended:
            if not (reservation.held and reservation.tenant):
                results.append(False)
                continue
            outcome = next(outcomes)
            key = (reservation.tenant, reservation.job_id)
            if isinstance(outcome, QuotaBackendDown) and renewed[key]:
                self._held[key] = None  # retried: keep renewing the slot until it gets through
            elif not isinstance(outcome, Exception):
                self._remember(reservation.job_id)
            results.append(outcome)
        return results

    def _remember(self, job_id: str) -> None:
        released = self._released
        now = time.monotonic()
        released[job_id] = now
        horizon = now - RELEASED_SECONDS
        while len(released) > RELEASED_MEMORY or next(iter(released.values())) < horizon:
            released.popitem(last=False)

    def released_here(self, job_id: str) -> bool:
        """This replica released the job already (Redis answered; the ledger has it): the
        worker's usage report of it needs no second, idempotent release."""
        return job_id in self._released

    async def _retry(self, reservation: Reservation, usage: JobUsage) -> None:
        """A release that found Redis away: asked again, with growing pauses."""
        for attempt in range(5):
            await asyncio.sleep(0.2 * 2**attempt)
            try:
                await self.release(reservation, usage)
                return
            except QuotaBackendDown:
                pass
        self._held.pop((reservation.tenant, reservation.job_id), None)  # left to its lease
        log.error("could not release job %s; its lease will reclaim the slot", reservation.job_id)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for pending releases and stop renewing (at shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._releases:  # a flush may start retries: wait for those too
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._releases), timeout=left)
        for task in (self._lease_ender, self._renewer):
            if task is not None:
                await stop_task(task)
        self._lease_ender = self._renewer = None

    # --- renewal -------------------------------------------------------------------------

    def start_renewal(self) -> None:
        """Renew the open reservations every third of the lease until `drain`; and give
        back the free slots of ended leases."""
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_loop(), name="reservation-renewal"
            )
        if self.leases is not None and self._lease_ender is None:
            self._lease_ender = asyncio.get_running_loop().create_task(
                end_leases(self.quota, self.leases), name="lease-end"
            )

    @property
    def renew_every(self) -> float:
        return max(self.quota.lease / 3, 0.05)

    async def renew(self) -> int:
        """One renewal round: every open reservation, `RENEW_BATCH` per Redis call; those
        found gone are forgotten. Returns how many are still held."""
        held = list(self._held)
        if not held:
            return 0
        kept = await self.quota.renew(held)
        for key, alive in zip(held, kept, strict=True):
            if not alive:
                self._held.pop(key, None)
        self.renewals += 1
        return sum(kept)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                await self.renew()
            except QuotaBackendDown:
                log.warning("redis down: reservations not renewed this round")
            except Exception as exc:
                log.warning("renewing reservations failed: %s", exc)


def _ending(reservation: Reservation, usage: JobUsage) -> Ending:
    """What `Quota.release` books for a reservation and its job's usage."""
    return Ending(
        reservation.tenant,
        reservation.model,
        reservation.job_id,
        usage.prompt_tokens,
        usage.completion_tokens,
        failed=usage.failed,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache=usage.cache,
        cache_price=usage.cache_price,
        lease=reservation.lease,
    )


def end_user(request: object) -> str:
    """The request's `user` field (OpenAI's end-user id), '' when absent or not a string."""
    user = getattr(request, "user", "")
    return user if isinstance(user, str) else ""
