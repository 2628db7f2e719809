"""The whole picture of a running llmq, read from NATS for `llmq status|top|workers|models`:
workers (registry entries made live by their micro STATS), models (catalog, live workers and
queues together) and api replicas. Nothing here writes or creates anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from llmq.dispatcher.probes import (
    QueueState,
    micro_gather,
    queue_states,
    read_models,
    read_workers,
)
from llmq.schemas import names
from llmq.schemas.registry import WorkerInfo
from llmq.schemas.services import ApiMetadata, WorkerMetadata

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
    unanswered: list[str] = field(default_factory=list)
    """Workers the registry knows alive that did not answer STATS within the timeout (their
    jobs, errors and live in-flight figures are unknown)."""
    waited: float = 0.0
    """The timeout the micro replies were waited for, seconds."""


async def _safe(coro: Any, default: Any, errors: list[str], what: str) -> Any:
    try:
        return await coro
    except Exception as exc:
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return default


@dataclass(slots=True)
class _WorkerStats:
    """One worker's micro STATS reply, summed over its endpoints."""

    meta: WorkerMetadata
    jobs: int = 0
    errors: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


def _worker_stats(replies: list[dict[str, Any]]) -> dict[str, _WorkerStats]:
    """STATS replies by worker id: jobs, errors and in-flight per model."""
    out: dict[str, _WorkerStats] = {}
    for reply in replies:
        meta = WorkerMetadata.from_metadata(reply.get("metadata"))
        if not meta.worker_id:
            continue
        st = _WorkerStats(meta)
        for ep in reply.get("endpoints") or []:
            st.jobs += int(ep.get("num_requests") or 0)
            st.errors += int(ep.get("num_errors") or 0)
            data = ep.get("data") or {}
            model = data.get("model")
            if model:
                st.by_model[model] = st.by_model.get(model, 0) + int(data.get("in_flight") or 0)
        out[meta.worker_id] = st
    return out


API_QUIET = 0.2
"""Seconds a look waits for more api replicas once every one it expected answered."""


def api_id(reply: Any) -> str:
    """The micro service id of a PING reply (`ApiView.id`)."""
    return str(reply.get("id", "")) if isinstance(reply, dict) else ""


def api_views(replies: list[dict[str, Any]]) -> list[ApiView]:
    apis = []
    for reply in replies:
        meta = ApiMetadata.from_metadata(reply.get("metadata"))
        apis.append(
            ApiView(
                id=api_id(reply),
                instance=meta.instance_id,
                host=meta.host,
                port=meta.port,
                open_streams=meta.open_streams,
                accepting=meta.accepting,
                version=str(reply.get("version", "")),
            )
        )
    return sorted(apis, key=lambda a: (a.instance, a.id))


def _worker_views(
    workers: list[WorkerInfo], by_worker: dict[str, _WorkerStats], now: float
) -> list[WorkerView]:
    """The registry's workers made live by their STATS replies (where they answered)."""
    views: list[WorkerView] = []
    for info in workers:
        st = by_worker.get(info.id)
        if st:  # the micro service's metadata is live; the heartbeat may be 2 s old
            info = msgspec.structs.replace(
                info,
                in_flight=st.meta.in_flight,
                circuit=st.meta.circuit,
                draining=st.meta.draining or info.draining,
            )
        views.append(
            WorkerView(
                info=info,
                jobs=st.jobs if st else None,
                errors=st.errors if st else None,
                in_flight_by_model=st.by_model if st else None,
                seen_ago=max(0.0, now - info.heartbeat_at) if info.heartbeat_at else 0.0,
            )
        )
    return views


async def snapshot(
    nc: Client,
    js: JetStreamContext,
    micro_timeout: float = 2.0,
    *,
    apis: Collection[str] | None = None,
) -> Snapshot:
    """Workers, models, queues and api replicas, read concurrently (up to `micro_timeout`):
    the workers' STATS once the registry says which workers to wait for; the api replicas'
    PINGs until every one of `apis` (micro service ids: those an earlier look saw) answered
    and `API_QUIET` passed without another, or with `apis` None until `micro_timeout` (no
    registry names the replicas, and a loaded one answers late). `apis=()`: none awaited."""
    errors: list[str] = []
    workers: list[WorkerInfo] = await _safe(read_workers(js), [], errors, "workers")
    alive = [w.id for w in workers]
    stats_of = micro_gather(nc, "STATS", names.MICRO_SERVICE, micro_timeout, quiet=0, expect=alive)
    quiet = micro_timeout if apis is None else API_QUIET
    pings_of = micro_gather(
        nc, "PING", names.API_MICRO_SERVICE, micro_timeout, quiet=quiet, expect=apis, key=api_id
    )
    models, queues, stats, pings = await asyncio.gather(
        _safe(read_models(js), [], errors, "models"),
        _safe(queue_states(js), [], errors, "queues"),
        _safe(stats_of, [], errors, "stats"),
        _safe(pings_of, [], errors, "apis"),
    )
    now = time.time()
    by_worker = _worker_stats(stats)
    views = _worker_views(workers, by_worker, now)
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
        unanswered=[w.id for w in workers if w.id not in by_worker],
        waited=micro_timeout,
    )
