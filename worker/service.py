"""The worker as the NATS micro service `llmq-worker`.

`nats micro ls`, `nats micro info llmq-worker` and `nats micro stats llmq-worker` list every
worker: its metadata carries the worker id, backend, models, capacity, in-flight count and
circuit state, read live on each request.

Jobs do not arrive through a micro endpoint (workers pull them from JetStream), so the
service declares one endpoint per stream and model that describes where its jobs come from
(`jobs` on `llmq.jobs.<model>`, queue group = the shared pull consumer `jobs-<model>`) and
reports the worker's own job counters for it: requests = jobs run, errors = jobs that
failed here, processing time = start to end of each job's stream. Endpoint `data` holds the
in-flight count and the running jobs (id, tenant, age), which `llmq jobs` reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.micro.service import EndpointInfo, EndpointStats

from llmq.dispatcher.micro import LiveService
from llmq.schemas import names
from llmq.schemas.registry import WorkerInfo
from llmq.schemas.services import WorkerMetadata
from llmq.worker.metrics import JobBook

DESCRIPTION = "llmq worker: runs the jobs of its models, pulled from JetStream"
RUNNING_SHOWN = 100
"""Most running jobs listed per endpoint in STATS data."""


def endpoint_name(stream: str) -> str:
    return "batch" if stream == names.BATCH_STREAM else "jobs"


def endpoint_subject(stream: str, model: str) -> str:
    if stream == names.BATCH_STREAM:
        return names.batch_subject(model)
    return names.jobs_subject(model)


class WorkerService(LiveService):
    """`llmq-worker` with live metadata and job-backed endpoint statistics."""

    def __init__(
        self, nc: Client, book: JobBook, snapshot: Callable[[], WorkerInfo], version: str
    ) -> None:
        super().__init__(nc, names.MICRO_SERVICE, version, DESCRIPTION)
        self._book = book
        self._snapshot = snapshot
        self._refresh()

    @classmethod
    async def open(
        cls, nc: Client, book: JobBook, snapshot: Callable[[], WorkerInfo], version: str
    ) -> WorkerService:
        service = cls(nc, book, snapshot, version)
        await service.start()
        return service

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()

    def live_metadata(self) -> WorkerMetadata:
        return WorkerMetadata.from_info(self._snapshot())

    def endpoint_infos(self) -> list[EndpointInfo]:
        return [
            EndpointInfo(
                name=endpoint_name(stream),
                subject=endpoint_subject(stream, model),
                queue_group=names.consumer_name(stream, model),
                metadata={"model": model, "stream": stream},
            )
            for stream, model in self._book.counters
        ]

    def endpoint_stats(self) -> list[EndpointStats]:
        now = time.time()
        in_flight = self._book.in_flight()
        running: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for job in self._book.running.values():
            shown = running.setdefault((job.stream, job.model), [])
            if len(shown) < RUNNING_SHOWN:
                entry: dict[str, Any] = {
                    "job": job.job_id,
                    "tenant": job.tenant,
                    "age": round(now - job.started, 3),
                }
                if job.deadline:
                    entry["deadline_in"] = round(job.deadline - now, 3)
                shown.append(entry)
        endpoints = []
        for source, counters in self._book.counters.items():
            stream, model = source
            average = counters.processing_ns // counters.requests if counters.requests else 0
            endpoints.append(
                EndpointStats(
                    name=endpoint_name(stream),
                    subject=endpoint_subject(stream, model),
                    queue_group=names.consumer_name(stream, model),
                    num_requests=counters.requests,
                    num_errors=counters.errors,
                    last_error=counters.last_error,
                    processing_time=counters.processing_ns,
                    average_processing_time=average,
                    data={
                        "model": model,
                        "stream": stream,
                        "in_flight": in_flight.get(source, 0),
                        "running": running.get(source, []),
                    },
                )
            )
        return endpoints
