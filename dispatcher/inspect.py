"""Reading llmq's state straight from NATS, for the `llmq` operator commands and the api's
`/metrics`. Nothing here writes or creates anything.

- queues: the per-model pull consumers of LLMQ_JOBS and LLMQ_BATCH (jobs waiting, jobs
  delivered but not acked, open pull requests);
- the worker registry and model catalog: the LLMQ_WORKERS and LLMQ_MODELS buckets;
- the processes: the NATS micro services `llmq-worker` (job counters, running jobs) and
  `llmq-api` (one per api replica), gathered with `$SRV.PING|STATS.<name>`;
- queued jobs: the messages still in the streams, read one by one (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.micro.service import ServiceVerb, control_subject

from llmq.schemas import names
from llmq.schemas.registry import ModelInfo, WorkerInfo, model_info_decoder, worker_info_decoder

STREAMS = (names.JOBS_STREAM, names.BATCH_STREAM)
_CONSUMER_PAGE = 256


# --- queues ----------------------------------------------------------------------------------


@dataclass(slots=True)
class QueueState:
    """One model's pull consumer on one stream."""

    stream: str
    model: str
    consumer: str
    pending: int = 0
    """Jobs queued and not yet delivered to any worker."""
    ack_pending: int = 0
    """Jobs delivered to a worker and not yet acked (starting, or held for a free slot)."""
    waiting: int = 0
    """Open pull requests: free worker slots asking for a job."""
    redelivered: int = 0
    delivered_seq: int = 0
    """Last stream sequence delivered: messages at or below it have been handed out."""


def _model_of_consumer(stream: str, consumer: str) -> str | None:
    prefix = "batch-" if stream == names.BATCH_STREAM else "jobs-"
    if not consumer.startswith(prefix):
        return None
    try:
        return names.unescape_model(consumer[len(prefix) :])
    except (ValueError, UnicodeDecodeError):
        return None


async def queue_states(js: JetStreamContext) -> list[QueueState]:
    """Every llmq consumer of both streams (two requests per 256 consumers)."""
    states: list[QueueState] = []
    for stream in STREAMS:
        offset = 0
        while True:
            try:
                page = await js.consumers_info(stream, offset=offset or None)
            except NotFoundError:
                break
            for info in page:
                model = _model_of_consumer(stream, info.name)
                if model is None:
                    continue
                states.append(
                    QueueState(
                        stream=stream,
                        model=model,
                        consumer=info.name,
                        pending=info.num_pending or 0,
                        ack_pending=info.num_ack_pending or 0,
                        waiting=info.num_waiting or 0,
                        redelivered=info.num_redelivered or 0,
                        delivered_seq=(info.delivered.stream_seq or 0) if info.delivered else 0,
                    )
                )
            if len(page) < _CONSUMER_PAGE:
                break
            offset += len(page)
    return states


# --- registry --------------------------------------------------------------------------------


async def _bucket_values(js: JetStreamContext, bucket: str, timeout: float) -> list[bytes]:
    """The current value of every key: the stream's subject list, then the last message of
    each. (A KV watcher's "caught up" marker can arrive before the values it announces.)"""
    stream = f"KV_{bucket}"
    try:
        async with asyncio.timeout(timeout):
            info = await js.stream_info(stream, subjects_filter=f"$KV.{bucket}.>")
            subjects = sorted((info.state.subjects or {}) if info.state else {})
            messages = await asyncio.gather(
                *(js.get_last_msg(stream, subject) for subject in subjects),
                return_exceptions=True,
            )
    except (NotFoundError, TimeoutError):
        return []
    values: list[bytes] = []
    for msg in messages:
        if isinstance(msg, BaseException) or not msg.data:
            continue  # gone meanwhile (expired, deleted)
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        values.append(msg.data)
    return values


async def read_workers(js: JetStreamContext, timeout: float = 2.0) -> list[WorkerInfo]:
    """The entries of LLMQ_WORKERS (expired ones are gone: the bucket has a TTL)."""
    workers = []
    for raw in await _bucket_values(js, names.WORKERS_BUCKET, timeout):
        with contextlib.suppress(Exception):
            workers.append(worker_info_decoder.decode(raw))
    return sorted(workers, key=lambda w: w.id)


async def read_models(js: JetStreamContext, timeout: float = 2.0) -> list[ModelInfo]:
    models = []
    for raw in await _bucket_values(js, names.MODELS_BUCKET, timeout):
        with contextlib.suppress(Exception):
            models.append(model_info_decoder.decode(raw))
    return sorted(models, key=lambda m: m.name)


# --- micro services --------------------------------------------------------------------------


async def micro_gather(
    nc: Client, verb: str, service: str | None, timeout: float = 1.0, quiet: float = 0.2
) -> list[dict[str, Any]]:
    """Ask every instance of a micro service (`PING`, `INFO` or `STATS`; `service` None:
    every service) and collect the replies: wait at most `timeout`, and stop `quiet`
    seconds after the last reply."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            replies.append(json.loads(msg.data))
            arrived.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(control_subject(ServiceVerb(verb), name=service), b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                async with asyncio.timeout(min(left, quiet) if replies else left):
                    await arrived.wait()
            except TimeoutError:
                if replies:
                    break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return replies


# --- the whole picture -----------------------------------------------------------------------


@dataclass
class WorkerView:
    info: WorkerInfo
    jobs: int | None = None
    """Jobs run since start (from the worker's micro STATS), None if it did not answer."""
    errors: int | None = None
    in_flight_by_model: dict[str, int] | None = None
    seen_ago: float = 0.0

    @property
    def state(self) -> str:
        if self.info.draining:
            return "draining"
        if self.info.circuit != "closed":
            return f"circuit {self.info.circuit}"
        return "ready"


@dataclass
class ModelView:
    name: str
    backend: str = ""
    workers: int = 0
    """Live workers taking jobs of this model (draining ones excluded)."""
    in_flight: int = 0
    capacity: int = 0
    """Slots of the live workers serving it; a worker of several models counts for each."""
    queued: int = 0
    unacked: int = 0
    waiting: int = 0


@dataclass
class ApiView:
    id: str
    instance: str = ""
    host: str = ""
    port: str = ""
    open_streams: int = 0
    accepting: bool = True
    version: str = ""


@dataclass
class Snapshot:
    taken_at: float
    workers: list[WorkerView] = field(default_factory=list)
    models: list[ModelView] = field(default_factory=list)
    apis: list[ApiView] = field(default_factory=list)
    queues: list[QueueState] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _safe(coro: Any, default: Any, errors: list[str], what: str) -> Any:
    try:
        return await coro
    except Exception as exc:
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return default


def _worker_stats(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """STATS replies by worker id: jobs, errors and in-flight per model."""
    out: dict[str, dict[str, Any]] = {}
    for reply in replies:
        worker_id = (reply.get("metadata") or {}).get("worker_id")
        if not worker_id:
            continue
        jobs = errors = 0
        by_model: dict[str, int] = {}
        for ep in reply.get("endpoints") or []:
            jobs += int(ep.get("num_requests") or 0)
            errors += int(ep.get("num_errors") or 0)
            data = ep.get("data") or {}
            model = data.get("model")
            if model:
                by_model[model] = by_model.get(model, 0) + int(data.get("in_flight") or 0)
        out[worker_id] = {"jobs": jobs, "errors": errors, "by_model": by_model, "raw": reply}
    return out


def api_views(replies: list[dict[str, Any]]) -> list[ApiView]:
    apis = []
    for reply in replies:
        meta = reply.get("metadata") or {}
        apis.append(
            ApiView(
                id=str(reply.get("id", "")),
                instance=meta.get("instance_id", ""),
                host=meta.get("host", ""),
                port=meta.get("port", ""),
                open_streams=int(meta.get("open_streams") or 0),
                accepting=meta.get("accepting", "true") == "true",
                version=str(reply.get("version", "")),
            )
        )
    return sorted(apis, key=lambda a: (a.instance, a.id))


async def snapshot(nc: Client, js: JetStreamContext, micro_timeout: float = 0.5) -> Snapshot:
    """Workers, models, queues and api replicas, read concurrently."""
    errors: list[str] = []
    workers, models, queues, stats, pings = await asyncio.gather(
        _safe(read_workers(js), [], errors, "workers"),
        _safe(read_models(js), [], errors, "models"),
        _safe(queue_states(js), [], errors, "queues"),
        _safe(micro_gather(nc, "STATS", names.MICRO_SERVICE, micro_timeout), [], errors, "stats"),
        _safe(micro_gather(nc, "PING", names.API_MICRO_SERVICE, micro_timeout), [], errors, "apis"),
    )
    now = time.time()
    by_worker = _worker_stats(stats)
    views: list[WorkerView] = []
    for info in workers:
        st = by_worker.get(info.id)
        if st:  # the micro service's metadata is live; the heartbeat may be 2 s old
            meta = st["raw"].get("metadata") or {}
            with contextlib.suppress(ValueError):
                info = msgspec.structs.replace(
                    info,
                    in_flight=int(meta.get("in_flight", info.in_flight)),
                    circuit=meta.get("circuit", info.circuit),
                    draining=meta.get("draining", "") == "true" or info.draining,
                )
        views.append(
            WorkerView(
                info=info,
                jobs=st["jobs"] if st else None,
                errors=st["errors"] if st else None,
                in_flight_by_model=st["by_model"] if st else None,
                seen_ago=max(0.0, now - info.heartbeat_at) if info.heartbeat_at else 0.0,
            )
        )
    table: dict[str, ModelView] = {m.name: ModelView(m.name, m.backend) for m in models}
    for view in views:
        w = view.info
        for model in w.models:
            mv = table.setdefault(model, ModelView(model, w.backend))
            if view.in_flight_by_model is not None:
                mv.in_flight += view.in_flight_by_model.get(model, 0)
            else:
                mv.in_flight += w.in_flight if len(w.models) == 1 else 0
            if not w.draining:
                mv.workers += 1
                mv.capacity += w.capacity
    for q in queues:
        mv = table.setdefault(q.model, ModelView(q.model))
        mv.queued += q.pending
        mv.unacked += q.ack_pending
        mv.waiting += q.waiting
    return Snapshot(
        taken_at=now,
        workers=views,
        models=sorted(table.values(), key=lambda m: m.name),
        apis=api_views(pings),
        queues=queues,
        errors=errors,
    )


# --- jobs ------------------------------------------------------------------------------------


@dataclass
class JobView:
    job_id: str
    model: str
    stream: str
    state: str
    """`queued` (not delivered yet), `delivered` (a worker has it, not started or held) or
    `running` (reported by its worker)."""
    tenant: str = ""
    kind: str = "chat"
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
            headers = msg.headers or {}
            job_model = names.unescape_model(str(msg.subject).rpartition(".")[2])
            deadline_ms = int(headers.get(names.H_DEADLINE, "0") or 0)
            handed_out = msg.seq <= delivered.get((stream, job_model), 0)
            jobs.append(
                JobView(
                    job_id=headers.get(names.H_JOB, ""),
                    model=job_model,
                    stream=stream,
                    state="delivered" if handed_out else "queued",
                    tenant=headers.get(names.H_TENANT, ""),
                    kind=headers.get(names.H_KIND, "chat"),
                    age=max(0.0, now - msg.time.timestamp()) if msg.time else 0.0,
                    deadline_in=(deadline_ms / 1000 - now) if deadline_ms else None,
                )
            )
    return jobs[:limit]


def running_jobs(stats: list[dict[str, Any]], model: str | None = None) -> list[JobView]:
    """Running jobs as the workers' micro STATS report them."""
    jobs = []
    for reply in stats:
        worker_id = (reply.get("metadata") or {}).get("worker_id", "")
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
    micro_timeout: float = 0.5,
) -> list[JobView]:
    """Running jobs (from the workers) then queued ones (from the streams)."""
    stats, queues = await asyncio.gather(
        micro_gather(nc, "STATS", names.MICRO_SERVICE, micro_timeout), queue_states(js)
    )
    running = running_jobs(stats, model)
    seen = {j.job_id for j in running}
    waiting = [j for j in await queued_jobs(js, queues, limit, model) if j.job_id not in seen]
    return (running + waiting)[: max(limit, len(running))]
