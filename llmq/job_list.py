"""The jobs of a running llmq, for `llmq jobs`: running ones as their workers report them,
then the ones still waiting in the streams. Nothing here writes or creates anything.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmq.dispatcher.probes import (
    STREAMS,
    QueueState,
    micro_gather,
    queue_states,
    read_workers,
)
from llmq.schemas import names
from llmq.schemas.envelope import DEFAULT_KIND, EnvelopeError, JobEnvelope, JobKind
from llmq.schemas.services import WorkerMetadata


@dataclass
class JobView:
    job_id: str
    model: str
    stream: str
    state: str
    """`queued` (not delivered yet), `delivered` (a worker has it, not started or held) or
    `running` (reported by its worker)."""
    tenant: str = ""
    kind: JobKind = DEFAULT_KIND
    age: float = 0.0
    """Seconds since it was queued (running jobs: since its worker started it)."""
    deadline_in: float | None = None
    worker: str = ""


async def queued_jobs(
    js: JetStreamContext,
    queues: list[QueueState],
    limit: int = 50,
    model: str | None = None,
) -> list[JobView]:
    """The oldest jobs still in the streams (at most `limit`), oldest first."""
    delivered = {(q.stream, q.model): q.delivered_seq for q in queues}
    jobs: list[JobView] = []
    now = time.time()
    for stream in STREAMS:
        batch = stream == names.BATCH_STREAM
        if model:
            subject = names.batch_subject(model) if batch else names.jobs_subject(model)
        else:
            subject = f"{names.BATCH_PREFIX if batch else names.JOBS_PREFIX}.>"
        seq = 1
        while len(jobs) < limit:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            except Exception:
                break
            if msg.seq is None:
                break
            seq = msg.seq + 1
            try:
                job = JobEnvelope.from_msg(msg)
            except EnvelopeError:
                continue  # a kind this version does not know: a newer api's job
            handed_out = msg.seq <= delivered.get((stream, job.model), 0)
            jobs.append(
                JobView(
                    job_id=job.id,
                    model=job.model,
                    stream=stream,
                    state="delivered" if handed_out else "queued",
                    tenant=job.tenant,
                    kind=job.kind,
                    age=max(0.0, now - msg.time.timestamp()) if msg.time else 0.0,
                    deadline_in=(job.deadline - now) if job.deadline_ms else None,
                )
            )
    return jobs[:limit]


def running_jobs(stats: list[dict[str, Any]], model: str | None = None) -> list[JobView]:
    """Running jobs as the workers' micro STATS report them."""
    jobs = []
    for reply in stats:
        worker_id = WorkerMetadata.from_metadata(reply.get("metadata")).worker_id
        for ep in reply.get("endpoints") or []:
            data = ep.get("data") or {}
            if model and data.get("model") != model:
                continue
            for job in data.get("running") or []:
                jobs.append(
                    JobView(
                        job_id=str(job.get("job", "")),
                        model=str(data.get("model", "")),
                        stream=str(data.get("stream", "")),
                        state="running",
                        tenant=str(job.get("tenant", "")),
                        age=float(job.get("age") or 0.0),
                        deadline_in=job.get("deadline_in"),
                        worker=worker_id,
                    )
                )
    return sorted(jobs, key=lambda j: -j.age)


async def list_jobs(
    nc: Client,
    js: JetStreamContext,
    limit: int = 50,
    model: str | None = None,
    micro_timeout: float = 2.0,
) -> list[JobView]:
    """Running jobs (from the workers the registry knows alive: each waited for, up to
    `micro_timeout`) then queued ones (from the streams)."""
    alive = [w.id for w in await read_workers(js)]
    stats, queues = await asyncio.gather(
        micro_gather(nc, "STATS", names.MICRO_SERVICE, micro_timeout, quiet=0, expect=alive),
        queue_states(js),
    )
    running = running_jobs(stats, model)
    seen = {j.job_id for j in running}
    waiting = [j for j in await queued_jobs(js, queues, limit, model) if j.job_id not in seen]
    return (running + waiting)[: max(limit, len(running))]
