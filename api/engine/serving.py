"""The part of serving every feature shares: one request's way through the queue, across
a model's fallback chain (`through_chain`), a place in the fair-share line and the quota of one
attempt (`hold`), and the request's end as observers see it (`observe`).

Transport-free. Chat (`llmq.api.chat.serving`), the Messages API (`llmq.api.messages.serving`)
and the Responses API (`llmq.api.responses.serving`) build their attempts on it (`place`: the
response cache, the queue's admission, the place and the quota); `QueuedJob`
(`llmq.api.engine.job`) relays one attempt's job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from starlette.responses import Response

from llmq.api.auth import Authenticator
from llmq.api.engine.model_chain import QUEUE_WAIT, Router
from llmq.api.engine.reuse import Ask, NoReuse, Plan, Reuse
from llmq.api.errors import ApiError, failed_response, public_failure
from llmq.api.fair_share import FairShare, Ticket
from llmq.api.preparation import RequestPreparer
from llmq.api.request_record import RequestRecord
from llmq.api.reservations import Reservations
from llmq.api.runtime import Runtime
from llmq.dispatcher.dispatch import DispatchError, JobRun
from llmq.dispatcher.jobs import JobSpec
from llmq.schemas.admission import FAILED, Refusal, Reservation
from llmq.schemas.frames import Failed

log = logging.getLogger(__name__)

Attempted = Response | tuple[str | None, Refusal | Failed | None]
"""One model's attempt: the response, or (the fallback cause, the failure) to move on."""
NOT_UNDER_WAY = "the job's deadline passed before it was under way"

Observer = Callable[[RequestRecord], None]


class Held(NamedTuple):
    """An attempt that may queue its job: its fair-share place, its quota, and what the
    response cache (`Serving.reuse`) does with the job (`lead`, `headers`)."""

    ticket: Ticket
    reservation: Reservation
    plan: Plan


class Serving:
    def __init__(
        self,
        runtime: Runtime,
        auth: Authenticator,
        reservations: Reservations,
        preparer: RequestPreparer,
        observers: list[Observer] | None = None,
        *,
        router: Router | None = None,
    ) -> None:
        self.rt = runtime
        self.auth = auth
        self.reservations = reservations
        self.preparer = preparer
        self.router = router if router is not None else Router(preparer.models, runtime.registry)
        self.fair = FairShare.shared(runtime.registry, runtime.redis, self.router.estimate)
        self.observers: list[Observer] = observers if observers is not None else []
        self.reuse: Reuse = NoReuse()
        """Answers without a job of their own (the response cache; set by the app)."""

    async def through_chain(
        self,
        record: RequestRecord,
        requested: str,
        attempt: Callable[[str, bool], Awaitable[Attempted]],
        new_id: Callable[[], str],
        id_prefix: str = "",
    ) -> Response:
        """`attempt(model, more)` on each model of `requested`'s fallback chain in turn (a
        new job id for each after the first) until one answers; then the last failure, in
        OpenAI's shape, or why no model could take the request. Chat and Responses."""
        chain = self.router.chain(requested)
        last: Refusal | Failed | None = None
        """What the client hears if no model of the chain serves it."""
        for index, model in enumerate(chain):
            more = index + 1 < len(chain)
            if index:
                record.job_id = new_id()
            outcome = await attempt(model, more)
            if isinstance(outcome, Response):
                return outcome
            cause, failure = outcome
            if failure is not None:
                last = failure
            if cause is not None and more:
                record.fallbacks.append((model, chain[index + 1], cause))
        if isinstance(last, Failed):
            record.status, record.error_code = last.status, last.error.code
            self.observe(record)
            headers = {"x-request-id": id_prefix + record.job_id}
            return failed_response(public_failure(last, record.job_id), headers)
        if last is None:  # every fallback was unusable for this request
            last = Refusal(
                503, f"no live worker serves model `{requested}`", "no_worker", param="model"
            )
        raise last

    def refused(
        self, model: str, more: bool, fallback: bool, refusal: Refusal
    ) -> tuple[str | None, Refusal | None]:
        """Why to move on after `model` refused the request (its check): the model has no
        live worker and another is left, or a fallback cannot take it; else `refusal` is
        the client's answer and is raised."""
        if refusal.code == "no_worker" and more:
            return self.router.unavailable_cause(model), refusal
        if fallback:  # a fallback unknown here or unable to take this request
            return None, None
        raise refusal

    def admitted(self, model: str, more: bool, time_left: float) -> Attempted | None:
        """None when `model`'s queue may start the job within `time_left`; else why to move
        on to the next model, or (the last one) the refusal raised."""
        if more and self.router.over_queue_wait(model):
            return QUEUE_WAIT, None
        full = self.router.admit(model, time_left)
        if full is not None:
            if more:
                return QUEUE_WAIT, full
            raise full
        return None

    async def place(self, ask: Ask, rank: int, time_left: Callable[[], float]) -> Attempted | Held:
        """One attempt (`ask`, on `ask.model`) up to its job, for every feature: answered
        from the response cache (a stored answer, a joined job), or why to move on when the
        model's queue cannot start it within `time_left()` (`admitted`), or its place and
        quota (`hold`); (None, None) when a fallback model refuses it."""
        plan = self.reuse.plan(self, ask)
        served = await plan.served()
        if served is not None:
            return served
        moved = self.admitted(ask.model, ask.more, time_left())
        if moved is not None:
            return moved
        record = ask.record
        held = await self.hold(
            ask.model,
            record,
            time_left(),
            rank,
            quota_model=ask.model,
            estimate=ask.estimate,
            max_tokens=ask.max_tokens,
            key_id=self.auth.key_id(ask.request),
            user=ask.user,
            fallback=ask.model != record.model,
        )
        return (None, None) if held is None else Held(*held, plan)

    def job_spec(self, ask: Ask, submitted: float, wait: float, traceparent: str | None) -> JobSpec:
        """The job of an attempt (`ask`): under way within `wait` seconds of `submitted`
        (the first-token deadline), cut `max_deadline` seconds after it."""
        record = ask.record
        return JobSpec(
            job_id=record.job_id,
            model=ask.model,
            body=ask.body,
            tenant=record.tenant,
            deadline_ms=int((submitted + wait) * 1000),
            kind=ask.kind,
            traceparent=traceparent,
            end_ms=int((submitted + self.rt.settings.api.max_deadline) * 1000),
            stream=ask.stream,
        )

    async def submit(self, spec: JobSpec, ticket: Ticket, reservation: Reservation) -> JobRun:
        """Queue the attempt's job; if that fails (or is cancelled), its fair-share place and
        its quota are given back at once; a queue that refused it is the client's error."""
        spec.lease = reservation.lease
        try:
            run = await self.rt.dispatcher.submit(spec)
        except BaseException as exc:
            ticket.leave()
            self.reservations.release_later(reservation, FAILED)
            if isinstance(exc, DispatchError):
                raise ApiError(
                    exc.status, exc.message, exc.code, headers=reservation.headers
                ) from None
            raise
        run.on_taken = ticket.leave
        return run

    async def hold(
        self,
        model: str,
        record: RequestRecord,
        time_left: float,
        rank: int,
        *,
        quota_model: str,
        estimate: int,
        max_tokens: int,
        key_id: str,
        user: str = "",
        fallback: bool,
    ) -> tuple[Ticket, Reservation] | None:
        """A place in `model`'s fair-share line and the quota of one attempt (chat and the
        Responses API). None when a fallback model is refused (its limits are never a way
        around the tenant's own: the chain moves on); for the requested model the refusal
        is raised, and a place that did not come within `time_left` is a 504."""
        until = time.monotonic() + time_left
        ticket = await self.fair.enter(model, record.tenant, time_left, rank)
        if ticket is None:
            raise ApiError(504, NOT_UNDER_WAY, "deadline_exceeded", type="timeout")
        try:
            reservation = await self.reservations.reserve(
                record.tenant,
                quota_model,
                estimate,
                max_tokens,
                record.job_id,
                key_id=key_id,
                user=user,
                leased=True,
                wait=until - time.monotonic(),
            )
        except BaseException:
            ticket.leave()
            raise
        if isinstance(reservation, Refusal):
            ticket.leave()
            if fallback:
                return None
            raise reservation
        return ticket, reservation

    def observe(self, record: RequestRecord) -> None:
        record.latency = time.monotonic() - record.started
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.exception("request observer failed")
