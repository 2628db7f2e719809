"""Async jobs (`/v1/jobs`): one request queued on LLMQ_BATCH, its record in LLMQ_ASYNC_JOBS.

Submit publishes the job (reply subject = its outcome subject, deadline = now +
`job_deadline`) and then creates its record `queued`; both are retried through leader
elections, and a job that was queued never gets a 503. The collector marks it `in_progress`
on the worker's `accepted` frame and settles it from the stored result; a sweeper in every
api replica expires jobs past their deadline and fails jobs whose result was lost
(`reconcile`). Cancel writes a `job_cancelled` result (first result wins) and tells the
worker to stop. Every transition is a compare-and-set on the record, and a settled record
never changes again, so the replicas may all do all of this at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.ports import Reserver, WebhookQueue, reservation_of
from llmq.dispatcher.batch.reconcile import quiet
from llmq.dispatcher.batch.records import (
    FINAL_JOB,
    JobRecord,
    Result,
    encoder,
    job_decoder,
    job_view,
    result_decoder,
    settle_job,
    unrun,
)
from llmq.dispatcher.dispatch import DispatchError
from llmq.dispatcher.jobs import JobSpec
from llmq.dispatcher.publish import DURABLE_RETRY, publish_job, store_full
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas import names
from llmq.schemas.admission import FAILED, PreparedRequest

log = logging.getLogger(__name__)

RECORD_RETRY = 30.0
"""Seconds a submit retries the record of a job it queued (a leader election of
LLMQ_ASYNC_JOBS) before it answers 202 anyway and writes the record in the background."""


@dataclass(slots=True)
class _Open:
    tenant: str
    model: str
    expires_at: float
    since: float


class AsyncJobs:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        jobs: KeyValue,
        results: KeyValue,
        reservations: Reserver,
        *,
        stall: float,
        publish_timeout: float = 2.0,
        record_retry: float = RECORD_RETRY,
    ) -> None:
        self.nc = nc
        self.js = js
        self.jobs = jobs
        self.results = results
        self.reservations = reservations
        self.stall = stall
        self.publish_timeout = publish_timeout
        self.record_retry = record_retry
        self._writes: set[asyncio.Task[None]] = set()
        self.webhooks: WebhookQueue | None = None
        self._open: dict[str, _Open] = {}
        self._follower = kvs.Follower(
            jobs, "*.*", self._on_record, resync=max(stall, 5.0), name="async-jobs"
        )
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key(tenant: str, job_id: str) -> str:
        return f"{names.tenant_token(tenant)}.{job_id}"

    # --- requests ------------------------------------------------------------------------

    async def submit(
        self,
        job_id: str,
        tenant: str,
        prepared: PreparedRequest,
        *,
        deadline: float,
        metadata: dict[str, str] | None = None,
        webhook_url: str | None = None,
        traceparent: str | None = None,
    ) -> JobRecord:
        """Queue the job, then record it. Raises DispatchError (503) only when it could not
        be queued; once queued, the record is retried through elections (see `_record`)."""
        now = time.time()
        spec = JobSpec(
            job_id=job_id,
            model=prepared.model,
            body=prepared.body,
            tenant=names.tenant_of_scope(tenant),  # workers and usage know tenants by name
            deadline_ms=int((now + deadline) * 1000),
            kind=prepared.kind,
            batch=True,
            traceparent=traceparent,
        )
        if len(spec.body) > int(self.nc.max_payload) - 1024:
            raise DispatchError(413, "request too large for the job queue", "request_too_large")
        reply = names.outcome_subject(tenant, prepared.model, job_id)
        try:
            await publish_job(
                self.js,
                spec.subject,
                spec.body,
                spec.headers(reply),
                self.publish_timeout,
                until=min(now + deadline, time.time() + DURABLE_RETRY),
            )
        except Exception as exc:
            if store_full(exc):
                raise DispatchError(
                    507,
                    "llmq's store LLMQ_BATCH is full (LLMQ_BATCH_STREAM_MAX_BYTES)",
                    "storage_full",
                ) from exc
            raise DispatchError(
                503, f"the job queue is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from exc
        record = JobRecord(
            id=job_id,
            tenant=tenant,
            model=prepared.model,
            kind=prepared.kind,
            created_at=now,
            expires_at=now + deadline,
            metadata=metadata or None,
            webhook_url=webhook_url or None,
            webhook="pending" if webhook_url else None,
        )
        return await self._record_queued(record)

    async def _record_queued(self, record: JobRecord) -> JobRecord:
        """Write the record of a queued job: from here on no 503 (the job runs whatever the
        request answers); if the writes keep failing, they go on in the background."""
        job_id = record.id
        bound = time.time() + self.record_retry
        try:
            return await retry(
                lambda: self._record(record),
                f"record job {job_id}",
                until=lambda: time.time() > bound,
            )
        except TimeoutError:
            log.warning("job %s is queued but its record is not written yet; retrying", job_id)
            task = asyncio.create_task(self._record_later(record), name=f"record-{job_id}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            return record

    async def _record(self, record: JobRecord) -> JobRecord:
        """Create the job's record (create-only: a retry is harmless), settle it from a result
        stored before it existed, and read it back. Each step is idempotent."""
        key = self.key(record.tenant, record.id)
        await kvs.create_once(self.jobs, key, encoder.encode(record))
        await self.settle(record.tenant, record.id)
        found = await kvs.read(self.jobs, key, job_decoder)
        return found[0] if found else record

    async def _record_later(self, record: JobRecord) -> None:
        """A queued job whose record the request could not wait for: keep writing it until
        the job's deadline (its result settles it then; GET answers 404 until then)."""
        try:
            await retry(
                lambda: self._record(record),
                f"record job {record.id}",
                until=lambda: time.time() > record.expires_at,
                max_pause=5.0,
            )
        except TimeoutError:
            log.error("job %s ran without a record: the job store was away", record.id)

    async def get(self, tenant: str, job_id: str) -> tuple[JobRecord, Result | None] | None:
        found = await kvs.read(self.jobs, self.key(tenant, job_id), job_decoder)
        if found is None:
            return None
        record = found[0]
        result = None
        if record.status in FINAL_JOB:
            raw = await kvs.read_raw(self.results, names.job_results_key(job_id))
            result = result_decoder.decode(raw) if raw else None
        return record, result

    async def list(self, tenant: str) -> list[str]:
        """The tenant's job ids, newest first (ids are time-ordered)."""
        keys = await kvs.scan(self.jobs, f"{names.tenant_token(tenant)}.*", meta_only=True)
        return sorted((k.split(".", 1)[1] for k in keys), reverse=True)

    async def cancel(self, tenant: str, job_id: str) -> JobRecord | None:
        found = await kvs.read(self.jobs, self.key(tenant, job_id), job_decoder)
        if found is None:
            return None
        record = found[0]
        if record.status not in FINAL_JOB:
            await self._end(record, "job_cancelled", "the job was cancelled")
            with contextlib.suppress(Exception):
                await self.nc.publish(names.cancel_subject(job_id))
            found = await kvs.read(self.jobs, self.key(tenant, job_id), job_decoder)
        return found[0] if found else record

    # --- collector hooks -----------------------------------------------------------------

    async def on_accepted(self, tenant: str, job_id: str) -> None:
        def start(record: JobRecord) -> JobRecord | None:
            if record.status != "queued":
                return None
            record.status, record.started_at = "in_progress", time.time()
            return record

        await kvs.mutate(self.jobs, self.key(tenant, job_id), job_decoder, start)

    async def settle(self, tenant: str, job_id: str) -> None:
        """Bring the record in line with the stored result (no result yet: nothing)."""
        raw = await kvs.read_raw(self.results, names.job_results_key(job_id))
        if raw is None:
            return
        result = result_decoder.decode(raw)
        now = time.time()
        out = await kvs.mutate(
            self.jobs,
            self.key(tenant, job_id),
            job_decoder,
            lambda r: None if r.status in FINAL_JOB else settle_job(r, result, now),
        )
        if out is None:
            return
        record = out[0]
        self._open.pop(self.key(tenant, job_id), None)
        if record.webhook == "pending" and self.webhooks is not None:
            await self.webhooks.enqueue(tenant, job_id)

    # --- webhooks ------------------------------------------------------------------------

    async def render(self, tenant: str, job_id: str) -> tuple[str, bytes] | None:
        found = await self.get(tenant, job_id)
        if found is None or not found[0].webhook_url or found[0].status not in FINAL_JOB:
            return None
        record, result = found
        return record.webhook_url or "", msgspec.json.encode(job_view(record, result))

    async def record_webhook(
        self, tenant: str, job_id: str, delivered: bool, attempts: int
    ) -> None:
        def note(record: JobRecord) -> JobRecord:
            record.webhook = "delivered" if delivered else "failed"
            record.webhook_attempts = attempts
            return record

        await kvs.mutate(self.jobs, self.key(tenant, job_id), job_decoder, note)

    # --- the sweeper ---------------------------------------------------------------------

    def start(self) -> None:
        self._follower.start()
        self._task = asyncio.create_task(self._sweep_loop(), name="async-jobs-sweeper")

    async def stop(self) -> None:
        await self._follower.stop()
        for write in list(self._writes):
            await stop_task(write)
        if self._task is not None:
            await stop_task(self._task)

    def _on_record(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._open.pop(key, None)
            return
        try:
            record = job_decoder.decode(value)
        except msgspec.DecodeError:
            return
        if record.status in FINAL_JOB:
            self._open.pop(key, None)
        else:
            since = record.started_at or record.created_at
            self._open[key] = _Open(record.tenant, record.model, record.expires_at, since)
            # Every replica renews every open job's reservation: any one of them may die.
            self.reservations.adopt(record.tenant, (record.id,))

    async def _sweep_loop(self) -> None:
        last_lost_check = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._expire()
                if time.monotonic() - last_lost_check >= self.stall:
                    last_lost_check = time.monotonic()
                    await self._find_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("async job sweep failed: %s", exc)

    async def _expire(self) -> None:
        now = time.time()
        for key, job in list(self._open.items()):
            if job.expires_at + 1.0 < now:
                await self._end_key(key, job, "job_expired", "the job's deadline passed")

    async def _find_lost(self) -> None:
        now = time.time()
        stale = {k: j for k, j in self._open.items() if now - j.since > self.stall}
        if not stale or not await quiet(self.js, {j.model for j in stale.values()}):
            return
        for key, job in stale.items():
            log.warning("async job %s has no result and no trace in JetStream: lost", key)
            await self._end_key(key, job, "job_lost", "the job's result was lost; submit it again")

    async def _end_key(self, key: str, job: _Open, code: str, message: str) -> None:
        found = await kvs.read(self.jobs, key, job_decoder)
        if found is None:
            self._open.pop(key, None)
            return
        await self._end(found[0], code, message)

    async def _end(self, record: JobRecord, code: str, message: str) -> None:
        """End a job that has no result with an `Unrun` one (unless a result wins the race)."""
        job_id = record.id
        if await kvs.create_once(self.results, names.job_results_key(job_id), unrun(code, message)):
            try:
                await self.reservations.release(
                    reservation_of(record.tenant, record.model, job_id), FAILED
                )
            except Exception as exc:
                log.warning("could not release job %s: %s", job_id, exc)
        await self.settle(record.tenant, job_id)


def list_page(ids: list[str], limit: int, after: str | None) -> tuple[list[str], bool]:
    """One page of a newest-first id list, after the id `after` (exclusive)."""
    start = 0
    if after is not None:
        start = next((i + 1 for i, v in enumerate(ids) if v == after), len(ids))
    page = ids[start : start + limit]
    return page, start + limit < len(ids)


def views(records: list[tuple[JobRecord, Result | None]]) -> list[dict[str, Any]]:
    return [job_view(r, res) for r, res in records]
