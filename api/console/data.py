"""The console's read models beyond the admin API: the live overview, workers and queues
(what `llmq top` shows), the model table, usage of every tenant (and its CSV), batches and
jobs across tenants, and a tenant's own page. Each reads the stores the api already has."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from llmq.api.console import model_file
from llmq.api.console.auth import admin, session_of
from llmq.api.console.live import LiveStats
from llmq.api.errors import ApiError
from llmq.api.model_table import ModelFile, ModelTable
from llmq.api.routes.admin import guarded, json_body, json_reply
from llmq.api.tenancy import TenantStore, UsageReader
from llmq.snapshot import Snapshot, snapshot

SNAPSHOT_TIMEOUT = 3.0
"""Seconds the workers page waits for NATS before it answers 503."""
MAX_DAYS = 400

router = APIRouter(prefix="/ui/api")
admin_only = [Depends(admin)]

log = logging.getLogger(__name__)


async def _snapshot(request: Request) -> Snapshot:
    rt = request.app.state.runtime
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT):
            return await snapshot(rt.nc, rt.js)
    except TimeoutError:
        raise ApiError(503, "NATS did not answer in time", "nats_unavailable") from None


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)  # dataclasses and structs alike


@router.get("/overview", dependencies=admin_only)
async def overview(request: Request) -> Response:
    live: LiveStats = request.app.state.console_live
    snap = await _snapshot(request)
    return json_reply(
        {
            **live.figures(),
            "queue_depth": sum(m.queued for m in snap.models),
            "in_flight": sum(m.in_flight for m in snap.models),
            "workers_up": sum(1 for w in snap.workers if not w.info.draining),
            "workers": len(snap.workers),
            "apis": len(snap.apis),
            "errors": snap.errors,
        }
    )


@router.get("/top", dependencies=admin_only)
async def top(request: Request) -> Response:
    snap = await _snapshot(request)
    workers = [
        {
            **_plain(w.info),
            "in_flight": w.info.in_flight,  # omitted by the struct when 0
            "circuit": w.info.circuit,
            "state": w.state,
            "jobs": w.jobs,
            "errors": w.errors,
            "seen_ago": round(w.seen_ago, 1),
        }
        for w in snap.workers
    ]
    estimator = getattr(request.app.state, "queue_estimator", None)
    return json_reply(
        {
            "workers": workers,
            "models": [
                # The api's admission estimate (None while a backlog's rate is unknown).
                {**_plain(m), "wait": estimator.wait_for(m.name) if estimator else None}
                for m in snap.models
            ],
            "queues": [_plain(q) for q in snap.queues],
            "apis": [_plain(a) for a in snap.apis],
            "errors": snap.errors,
        }
    )


@router.get("/models", dependencies=admin_only)
async def models(request: Request) -> Response:
    table: ModelTable = request.app.state.models
    registry = request.app.state.runtime.registry
    return json_reply(
        {
            "file": table.path,
            "editable": bool(table.path),
            "aliases": table.aliases,
            "defaults": table.defaults,
            "served": sorted(registry.live_models()),
        }
    )


@router.put("/models", dependencies=admin_only)
async def save_models(request: Request) -> Response:
    table: ModelTable = request.app.state.models
    if not table.path:
        raise ApiError(409, "set LLMQ_MODELS_FILE to edit the model table", "no_models_file")
    try:
        parsed: ModelFile = model_file.parse(await json_body(request))
    except msgspec.ValidationError as exc:
        raise ApiError(400, str(exc), "invalid_request") from None
    await asyncio.to_thread(model_file.write, table.path, parsed)
    table.reload()
    return await models(request)


async def _usage_rows(request: Request, tenant: str, days: int) -> list[dict[str, Any]]:
    store: TenantStore = request.app.state.store
    reader: UsageReader = request.app.state.usage
    names = [tenant] if tenant else [t.name for t in await guarded(store.list_tenants())]
    per_tenant = await asyncio.gather(
        *(guarded(reader.usage(n, days=max(1, min(days, MAX_DAYS)))) for n in names)
    )
    return [
        {**msgspec.to_builtins(r), "total_tokens": r.total_tokens}
        for rows in per_tenant
        for r in rows
    ]


@router.get("/usage", dependencies=admin_only)
async def usage(request: Request, tenant: str = "", days: int = 14) -> Response:
    return json_reply({"object": "list", "data": await _usage_rows(request, tenant, days)})


CSV_COLUMNS = (
    "day",
    "tenant",
    "model",
    "requests",
    "failed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
)


@router.get("/usage.csv", dependencies=admin_only)
async def usage_csv(request: Request, tenant: str = "", days: int = 14) -> Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(await _usage_rows(request, tenant, days))
    stamp = time.strftime("%Y%m%d", time.gmtime())
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="llmq-usage-{stamp}.csv"'},
    )


async def _work_of(request: Request, tenant: str, limit: int = 20) -> dict[str, Any]:
    wing = request.app.state.batches
    found = await asyncio.gather(
        wing.batch_serving.list(tenant, limit, None),
        wing.job_serving.list(tenant, limit, None),
        return_exceptions=True,
    )
    out: dict[str, Any] = {"tenant": tenant, "batches": [], "jobs": []}
    for key, result in zip(("batches", "jobs"), found, strict=True):
        if isinstance(result, BaseException):  # the detail to the log, never to the page
            log.warning("console: reading the %s of %s failed: %r", key, tenant, result)
            out.setdefault("errors", []).append(f"{key}: could not be read; retry")
        else:
            out[key] = result.get("data", [])
    return out


@router.get("/batches", dependencies=admin_only)
async def batches(request: Request, tenant: str = "") -> Response:
    store: TenantStore = request.app.state.store
    names = [tenant] if tenant else [t.name for t in await guarded(store.list_tenants())]
    return json_reply({"object": "list", "data": [await _work_of(request, n) for n in names]})


@router.post("/batches/{tenant}/{batch_id}/cancel", dependencies=admin_only)
async def cancel_batch(request: Request, tenant: str, batch_id: str) -> Response:
    return json_reply(await request.app.state.batches.batch_serving.cancel(tenant, batch_id))


@router.post("/jobs/{tenant}/{job_id}/cancel", dependencies=admin_only)
async def cancel_job(request: Request, tenant: str, job_id: str) -> Response:
    return json_reply(await request.app.state.batches.job_serving.cancel(tenant, job_id))


@router.get("/me")
async def me(request: Request, days: int = 14) -> Response:
    """A tenant's own page: its limits, usage and batches, read-only."""
    session = await session_of(request, "tenant")
    store: TenantStore = request.app.state.store
    tenant = await guarded(store.get(session.tenant))
    if tenant is None:
        raise ApiError(401, "this tenant no longer exists", "not_logged_in")
    async with request.app.state.list_gate.enter(session.tenant, session.key_id):
        work = await _work_of(request, session.tenant)  # two list calls (docs/security.md)
    return json_reply(
        {
            **work,
            "limits": tenant,
            "usage": await _usage_rows(request, session.tenant, days),
        }
    )
