"""The last step of one attempt on one model of a fallback chain, shared by every feature:
queue the job of an attempt `Serving.place` held (`queue_and_answer`), then answer the client
(stream or body), or — when the job failed before its first token and another model is left —
settle it and hand back why to move on. Also the watch on a queued job whose model lost its
last live worker meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from starlette.responses import Response

from llmq.api.engine.model_chain import UNSERVED_CHECK, failure_cause
from llmq.api.engine.reuse import Ask, MakeJob
from llmq.api.tracing import mark
from llmq.schemas.frames import Failed, failure

if TYPE_CHECKING:
    from llmq.api.engine.job import QueuedJob
    from llmq.api.engine.serving import Held, Serving
    from llmq.dispatcher.jobs import JobSpec

T = TypeVar("T")

Moved = tuple[str | None, Failed]
"""(the fallback cause, the failure) of an attempt that moves on to the next model."""


async def queue_and_answer(
    serving: Serving, ask: Ask, held: Held, spec: JobSpec, make_job: MakeJob | None = None
) -> Response | Moved:
    """The step after `Serving.place` in every feature: queue the attempt's job (`spec`) on
    the place and quota `held`, the response cache leading its run, then answer or move on.
    `make_job`: the feature's own job when it differs from a reused answer's (`ask.make_job`)."""
    ticket, reservation, plan = held
    run = plan.lead(await serving.submit(spec, ticket, reservation))
    mark(ask.record.trace, "published", run)
    job = (make_job or ask.make_job)(run, reservation, ticket)
    headers = {**ask.headers, **reservation.headers, **plan.headers}
    return await answer_or_move_on(serving, job, ask.model, ask.stream, ask.more, headers=headers)


async def answer_or_move_on(
    serving: Serving,
    job: QueuedJob,
    model: str,
    stream: bool,
    more: bool,
    *,
    headers: dict[str, str],
) -> Response | Moved:
    """The client's response, or (cause, failure) when `more` models are left and this one
    failed before its first token (a stream never switches after it)."""
    if stream:
        started = await watched(serving, job, model, job.first(), more)
        if isinstance(started, Failed):
            return started.error.code, started
        first, events = started
        if isinstance(first, Failed) and more and failure_cause(first) is not None:
            await events.aclose()
            return _moved_on(job, first)
        job.record.model = model
        return await job.stream(first, events, headers)
    outcome = await watched(serving, job, model, job.outcome(), more)
    if isinstance(outcome, Failed) and job.settled:  # `watched` gave up on it
        return failure_cause(outcome), outcome
    if isinstance(outcome, Failed) and more and failure_cause(outcome) is not None:
        return _moved_on(job, outcome)
    job.record.model = model
    return await job.answer(outcome, headers)


def _moved_on(job: QueuedJob, failed: Failed) -> Moved:
    job.settle(failed.status, code=failed.error.code, observe=False)
    return failure_cause(failed), failed


async def watched(
    serving: Serving, job: QueuedJob, model: str, step: Awaitable[T], more: bool
) -> T | Failed:
    """`step`, unless the job waits in the queue of a model that no live worker takes
    jobs of any more (circuit opened, workers gone, a rolling deploy between two workers):
    with a fallback left, the job is cancelled at once and the cause returned as a failure,
    to move on; without one, it waits for a worker `no_worker_grace` seconds (-1: until its
    deadline, which the job's own wait bounds anyway), then fails so."""
    grace = serving.rt.settings.api.no_worker_grace
    if not more and grace < 0:  # nothing to watch for: no task of its own
        return await step
    task = asyncio.ensure_future(step)
    unserved_since: float | None = None
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=UNSERVED_CHECK)
            if done:
                return task.result()
            run = job.run
            if run.taken or run.first_chunk_at is not None:
                continue
            if serving.rt.registry.workers_for(model):
                unserved_since = None
                continue
            now = time.monotonic()
            unserved_since = unserved_since if unserved_since is not None else now
            if not more and now - unserved_since < grace:
                continue
            cause = serving.router.unavailable_cause(model)
            job.settle(503, code=cause, observe=False)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return failure(
                503, f"no live worker takes model `{model}`", "service_unavailable", cause
            )
    finally:
        if not task.done():
            task.cancel()
