"""The batch wing of one api replica: async jobs, files and batches (docs/batch.md).

`BatchWing` opens the streams and buckets, runs this replica's share of the shared work
(results collector, batch runner, webhook sender, async-job sweeper, the evictor of
finished records) and builds the three
serving modules the routes of `api.routes.{jobs,files,batches}` call. It plugs the api's
own request preparer and quota reservations into the batch machinery, so async jobs and
batch lines are prepared and reserved exactly as interactive requests are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.api.batch import stores
from llmq.api.batch.batch_serving import BatchServing
from llmq.api.batch.egress import EgressPolicy
from llmq.api.batch.eviction import Evictor
from llmq.api.batch.file_bytes import FileBytes
from llmq.api.batch.file_serving import FileServing
from llmq.api.batch.job_serving import JobServing
from llmq.api.batch.purge import purge_scope
from llmq.api.batch.store_room import StoreRoom
from llmq.api.batch.webhooks import Webhooks
from llmq.api.preparation import RequestPreparer
from llmq.api.reservations import Reservations
from llmq.api.runtime import Runtime
from llmq.api.tenancy import TenantStore
from llmq.api.tenant_scope import ScopedReservations, TenantScopes
from llmq.dispatcher.batch.async_jobs import AsyncJobs
from llmq.dispatcher.batch.collector import ResultCollector
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.records import time_hex
from llmq.dispatcher.batch.store import BatchStore
from llmq.dispatcher.batch.supervisor import BatchRunner
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names

log = logging.getLogger(__name__)


class BatchWing:
    def __init__(
        self, runtime: Runtime, reservations: Reservations, preparer: RequestPreparer
    ) -> None:
        self.rt = runtime
        self.reservations = reservations
        self.preparer = preparer
        self.files: FileStore
        self.file_bytes: FileBytes
        self.store: BatchStore
        self.jobs: AsyncJobs
        self.runner: BatchRunner
        self.collector: ResultCollector
        self.webhooks: Webhooks
        self.evictor: Evictor
        self.job_serving: JobServing
        self.file_serving: FileServing
        self.batch_serving: BatchServing
        self._starter: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._buckets: dict[str, KeyValue] = {}
        self.purgers: list[Callable[[str], Awaitable[dict[str, int]]]] = []
        """More data of a tenant scope to delete with it (the Responses API's records)."""

    async def start(self) -> None:
        s, js, nc = self.rt.settings, self.rt.js, self.rt.nc
        buckets, objects = await self._provision()
        self._buckets = buckets
        self.rt.provisioner.add("batch streams", self._provision)
        results = buckets[names.RESULTS_BUCKET]
        scopes = TenantScopes(TenantStore(self.rt.redis))
        # The batch machinery names tenants by scope (api.tenant_scope); quotas by name.
        scoped = ScopedReservations(self.reservations)
        self.store = BatchStore(buckets[names.BATCHES_BUCKET])
        self.files = FileStore(objects, buckets[names.FILE_META_BUCKET])
        self.file_bytes = FileBytes(self.rt.redis, self.files)
        self.files.meter = self.file_bytes
        self.jobs = AsyncJobs(
            nc,
            js,
            buckets[names.ASYNC_JOBS_BUCKET],
            results,
            scoped,
            stall=s.batch.batch_stall,
        )
        self.webhooks = Webhooks(
            js,
            self.jobs.render,
            self.jobs.record_webhook,
            secret=s.batch.webhook_secret,
            attempts=s.batch.webhook_attempts,
            timeout=s.batch.webhook_timeout,
            egress=EgressPolicy(s.batch.webhook_allow),
        )
        self.jobs.webhooks = self.webhooks
        self.collector = ResultCollector(
            js, results, scoped, self.jobs.on_accepted, self.jobs.settle
        )
        self.runner = BatchRunner(
            nc,
            js,
            self.store,
            results,
            self.files,
            preparer=self.preparer,
            reservations=scoped,
            owner=f"{s.api.instance_id}-{time_hex()[12:20]}",
            lease=s.batch.batch_lease,
            stall=s.batch.batch_stall,
            max_inflight=s.batch.batch_max_inflight,
            max_lines=s.batch.batch_max_lines,
        )
        self.evictor = Evictor(js, s.storage.store_evict_water)
        self._serve(scopes, StoreRoom(js, s.storage.store_high_water, self.evictor.make_room))
        self.collector.start()
        self.webhooks.start()
        self.evictor.start()
        self._starter = asyncio.create_task(self._start_when_synced())
        self._sweeper = asyncio.create_task(self._sweep_files(), name="batch-file-sweeper")

    def _serve(self, scopes: TenantScopes, room: StoreRoom) -> None:
        """The serving modules the routes call; `room`: whether the stores new work writes
        have room for it."""
        self.job_serving = JobServing(
            self.rt, self.jobs, self.preparer, self.reservations, scopes, room=room
        )
        self.file_serving = FileServing(
            self.rt, self.files, scopes, room=room, sizes=self.file_bytes
        )
        self.batch_serving = BatchServing(
            self.rt,
            self.store,
            self.file_serving,
            self.runner.kick,
            scopes,
            room=room,
            resolve=self.preparer.models.resolve,
        )

    async def _sweep_files(self) -> None:
        """Delete expired files (readers already treat them as gone) and the data of
        deleted tenants."""
        while True:
            await asyncio.sleep(self.rt.settings.batch.file_expiry_sweep)
            try:
                await self.files.sweep()
                await self.purge_deleted()
            except Exception as exc:
                log.warning("file sweep failed: %s", exc)

    async def purge_deleted(self) -> dict[str, int]:
        """Purge the files, jobs and batches of every deleted tenant (`llmq tenants delete`
        and the admin API leave their scopes in Redis); how many of each. A scope is purged
        again on every sweep until a batch that ran when its tenant was deleted can write
        nothing more (its output file), then forgotten."""
        store = TenantStore(self.rt.redis)
        linger = self.rt.settings.batch.batch_max_window + 3600
        purged: dict[str, int] = {}
        for scope, deleted_at in (await store.deleted_scopes()).items():
            for kind, count in (await self.purge_tenant(scope)).items():
                purged[kind] = purged.get(kind, 0) + count
            if time.time() - deleted_at > linger:
                await store.forget_deleted_scope(scope)
        return purged

    async def purge_tenant(self, scope: str) -> dict[str, int]:
        """Delete every file, job and batch of a deleted tenant's scope (and what the
        `purgers` of other wings hold: stored responses, conversations)."""
        b = self._buckets
        counts = await purge_scope(
            scope,
            self.files,
            b[names.ASYNC_JOBS_BUCKET],
            b[names.BATCHES_BUCKET],
            b[names.RESULTS_BUCKET],
        )
        await self.file_bytes.forget(scope)
        for purge in self.purgers:
            counts.update(await purge(scope))
        return counts

    async def _provision(self) -> tuple[dict[str, KeyValue], ObjectStore]:
        """LLMQ_OUTCOMES, LLMQ_WEBHOOKS, their consumers, the buckets and the file store."""
        js, retention = self.rt.js, self.rt.settings.batch.job_retention
        replicas = self.rt.settings.protocol.nats_replicas
        create = self.rt.settings.connection.nats_provision
        limits = self.rt.settings.storage
        await stores.ensure_batch_streams(
            js,
            retention,
            self.rt.settings.batch.webhook_attempts,
            replicas,
            create,
            limits=limits,
        )
        return (
            await stores.batch_buckets(js, retention, replicas, create, limits=limits),
            await stores.files_store(js, replicas, create, limits=limits),
        )

    async def _start_when_synced(self) -> None:
        """Validation needs the model catalog: wait for the registry's first sync."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.rt.registry.synced.wait()
        await asyncio.sleep(0.2)
        self.jobs.start()
        self.runner.start()

    async def stop(self) -> None:
        for task in (self._starter, self._sweeper):
            if task is not None:
                await stop_task(task)
        for part in (self.runner, self.jobs, self.webhooks, self.collector, self.evictor):
            with contextlib.suppress(Exception):
                await part.stop()


def wing(request: Request) -> BatchWing:
    """The wing the app's lifespan built, for the batch feature's routes."""
    found: BatchWing = request.app.state.batches
    return found
