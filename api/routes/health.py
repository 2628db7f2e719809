"""Liveness (`/health`) and readiness (`/ready`: NATS, Redis and its data, live workers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmq.api.data_marker import DataMarker
from llmq.api.runtime import Runtime

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    marker: DataMarker | None = getattr(request.app.state, "data_marker", None)
    nats_ok = rt.nc.is_connected
    data_lost = ""
    try:
        async with asyncio.timeout(rt.settings.connection.redis_timeout):
            redis_ok = bool(await rt.redis.ping())
            data_lost = await marker.lost() if marker is not None else ""
    except Exception:
        redis_ok = False
    workers = rt.registry.live_workers()
    body: dict[str, object] = {
        "status": "ok",
        "nats": nats_ok,
        "redis": redis_ok,
        "workers": len(workers),
        "circuits_open": sorted(w.id for w in workers if w.circuit != "closed"),
    }
    failing = [name for name, ok in (("nats", nats_ok), ("redis", redis_ok)) if not ok]
    if data_lost:  # reachable, but without llmq's data (api/data_marker.py)
        body["redis_data"] = f"Valkey {data_lost}"
        failing.append("redis_data")
    if not rt.accepting:
        failing.append("shutting_down")
    if failing:
        body["status"] = "unavailable"
        body["failing"] = failing
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
