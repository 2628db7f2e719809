"""The in-progress phase: queue a batch's lines, follow their results, write progress.

Valid lines are queued in file order on LLMQ_BATCH (`Nats-Msg-Id` = the line's job id, so a
line queued again after a crash is dropped as a duplicate), at most `max_inflight` without a
result. Each line's quota is reserved first; while the tenant is rate limited the run waits
(a line is never dropped for that). At `expires_at` the batch expires; once every line has
a result it moves on to `finalizing`. Lines whose result JetStream has lost are queued again
(see `reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch import finalize
from llmq.dispatcher.batch.batch_input import InputGone, load_input
from llmq.dispatcher.batch.ports import reservation_of
from llmq.dispatcher.batch.reconcile import quiet
from llmq.dispatcher.batch.records import BatchError, BatchRecord, encoder, line_job_id, unrun
from llmq.dispatcher.jobs import JobSpec
from llmq.dispatcher.publish import DURABLE_RETRY, publish_job
from llmq.schemas import names
from llmq.schemas.admission import FAILED, Refusal

if TYPE_CHECKING:
    from llmq.dispatcher.batch.run import BatchInput, BatchRun

log = logging.getLogger(__name__)

CHUNK = 32
"""Lines reserved and published together."""
MAX_REQUEUES = 3
"""Times a lost line is queued again before it fails with `job_lost`."""


async def progress(run: BatchRun) -> None:
    try:
        found = await load_input(run)
    except InputGone as exc:
        await finalize.fail(run, [BatchError(code="invalid_file", message=str(exc))])
        return
    await run.follow_results()
    lines = found.lines
    # Lines that became invalid since validation (a model went away) and have no result.
    await run.store_unrun(
        {n.number: encoder.encode(n.error) for n in lines if n.error and n.number not in run.done}
    )
    state = run.dispatching
    position = run.record.dispatched
    # Lines queued before this run took the batch (a previous owner reserved them): renew
    # their reservations from here on; the lines this run reserves are renewed anyway.
    run.ctx.reservations.adopt(
        run.tenant, (line_job_id(run.hex, n) for n in found.valid[:position] if n not in run.done)
    )
    last_flush = 0.0
    while run.record.status == "in_progress":
        if time.time() >= run.record.expires_at:
            await finalize.wind_down(
                run, "expired", "batch_expired", "the batch's completion window ended"
            )
            return
        if time.time() >= state.retry_at:
            position = await _dispatch(run, found, position)
        if len(run.done) >= len(lines):
            now = int(time.time())

            def finalizing(record: BatchRecord, now: int = now) -> BatchRecord:
                if record.status == "in_progress":
                    record.status, record.finalizing_at = "finalizing", now
                    record.dispatched = len(found.valid)
                    _count(run, record)
                return record

            await run.write(finalizing)
            return
        await _stall_check(run, found, position)
        if time.monotonic() - last_flush >= 0.5:
            last_flush = time.monotonic()
            await run.write(functools.partial(_count, run, position=position))
        run.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await run.changed.wait()


def _count(run: BatchRun, record: BatchRecord, position: int | None = None) -> BatchRecord:
    if position is not None:
        record.dispatched = max(record.dispatched, position)
    completed = sum(1 for ok in run.done.values() if ok)
    record.request_counts.completed = completed
    record.request_counts.failed = len(run.done) - completed
    return record


async def _dispatch(run: BatchRun, found: BatchInput, position: int) -> int:
    """Queue lines from `position` on while fewer than max_inflight are unanswered;
    returns the new position (every valid line before it is queued or answered)."""
    valid, limit = found.valid, run.ctx.max_inflight
    inflight = sum(1 for n in valid[:position] if n not in run.done)
    while position < len(valid) and inflight < limit:
        room = min(CHUNK, limit - inflight, len(valid) - position)
        chunk = valid[position : position + room]
        queued = await _dispatch_chunk(run, found, chunk)
        position += queued
        inflight += queued
        if queued < len(chunk):
            break
    return position


async def _dispatch_chunk(run: BatchRun, found: BatchInput, chunk: list[int]) -> int:
    """Reserve and publish a run of lines; returns how many from its start are queued."""
    ready: list[int] = []
    stop = len(chunk)
    for i, number in enumerate(chunk):
        if number in run.done:
            ready.append(-1)
            continue
        prepared = found.prepared[number]
        held = await run.ctx.reservations.reserve(
            run.tenant,
            prepared.model,
            prepared.prompt_estimate,
            prepared.max_tokens,
            line_job_id(run.hex, number),
            key_id=run.record.key_id,
        )
        if isinstance(held, Refusal) and held.retry_after is not None:
            run.dispatching.retry_at = time.time() + max(0.2, min(held.retry_after, 5.0))
            stop = i
            break
        if isinstance(held, Refusal):
            message = f"line {number}: the tenant may not run this request ({held.code})"
            await run.store_unrun({number: unrun(held.code, message, number)})
            ready.append(-1)
            continue
        ready.append(number)
    published = await asyncio.gather(
        *(_publish(run, found, n) for n in ready[:stop] if n >= 0), return_exceptions=True
    )
    failures = iter(published)
    for i, number in enumerate(ready[:stop]):
        if number < 0:
            continue
        outcome = next(failures)
        if isinstance(outcome, BaseException):
            log.warning("batch %s: queueing line %d failed: %s", run.key, number, outcome)
            # Release what this and the later lines of the chunk reserved; they are queued
            # again from here (a duplicate publish is dropped by Nats-Msg-Id).
            for later in ready[i:stop]:
                if later >= 0:
                    model = found.prepared[later].model
                    job_id = line_job_id(run.hex, later)
                    with contextlib.suppress(Exception):
                        await run.ctx.reservations.release(
                            reservation_of(run.tenant, model, job_id), FAILED
                        )
            run.dispatching.retry_at = time.time() + 1.0
            return i
    return stop


async def _publish(run: BatchRun, found: BatchInput, number: int, msg_id: str = "") -> None:
    """Queue one line; `msg_id` set: a new `Nats-Msg-Id` (the line is queued again)."""
    prepared = found.prepared[number]
    job_id = line_job_id(run.hex, number)
    spec = JobSpec(
        job_id=job_id,
        model=prepared.model,
        body=prepared.body,
        tenant=names.tenant_of_scope(run.tenant),  # workers and usage know tenants by name
        deadline_ms=run.record.expires_at * 1000,
        kind=prepared.kind,
        batch=True,
    )
    headers = spec.headers(names.outcome_subject(run.tenant, prepared.model, job_id), msg_id)
    ack = await publish_job(
        run.ctx.js,
        spec.subject,
        spec.body,
        headers,
        run.ctx.publish_timeout,
        until=min(spec.deadline_ms / 1000, time.time() + DURABLE_RETRY),
    )
    run.seqs[number] = ack.seq


async def _stall_check(run: BatchRun, found: BatchInput, position: int) -> None:
    """Queue again the lines whose result JetStream has lost (see `reconcile`)."""
    state, stall = run.dispatching, run.ctx.stall
    now = time.monotonic()
    if now - run.last_result < stall or now - state.last_stall_check < stall:
        return
    state.last_stall_check = now
    missing = [n for n in found.valid[:position] if n not in run.done]
    if not missing:
        return
    if not await quiet(run.ctx.js, {found.prepared[n].model for n in missing}):
        return
    for number in missing:
        if await kvs.read_raw(run.ctx.results, run.result_key(number)) is not None:
            continue
        attempts = state.requeued.get(number, 0) + 1
        state.requeued[number] = attempts
        if attempts > MAX_REQUEUES:
            await run.store_unrun(
                {number: unrun("job_lost", f"line {number}: the request was lost", number)},
                release=True,
            )
            continue
        log.warning("batch %s: line %d has no result anywhere; queueing it again", run.key, number)
        job_id = line_job_id(run.hex, number)
        await _publish(run, found, number, msg_id=f"{job_id}.{int(time.time() * 1000)}")
    run.last_result = time.monotonic()
