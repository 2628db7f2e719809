"""The FastAPI application: lifespan (connections), routes, error handlers, CORS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from llmq import __version__
from llmq.api import tracing as api_tracing
from llmq.api.auth import Authenticator
from llmq.api.auth_changes import AuthChanges
from llmq.api.batch import batch_routes, file_routes, job_routes
from llmq.api.batch.wing import BatchWing
from llmq.api.cache.service import open_cache
from llmq.api.chat import routes as chat
from llmq.api.chat.serving import ChatServing
from llmq.api.collector import freeze_after_start
from llmq.api.console import app as console
from llmq.api.data_marker import DataMarker
from llmq.api.endpoints import routes as endpoint_routes
from llmq.api.endpoints.serving import EndpointServing
from llmq.api.engine.model_chain import Router
from llmq.api.errors import install_error_handlers
from llmq.api.listing import ListGate
from llmq.api.memory_trim import MemoryTrimmer
from llmq.api.messages import routes as messages
from llmq.api.messages.serving import MessagesServing
from llmq.api.model_table import ModelTable
from llmq.api.observability import Observability
from llmq.api.openapi_bodies import with_bodies
from llmq.api.preparation import RequestPreparer
from llmq.api.reservations import Reservations
from llmq.api.responses import conversation_routes
from llmq.api.responses import routes as responses
from llmq.api.responses.serving import open_responses
from llmq.api.routes import admin, health, metrics, models
from llmq.api.routes.plain import PlainRoute
from llmq.api.runtime import Runtime
from llmq.api.startup import Startup
from llmq.api.tenancy import Quota, TenantStore, UsageReader
from llmq.api.tenancy.client import is_cluster, redis_target
from llmq.api.tenancy.leases import Leases
from llmq.api.tenancy.request_rate import RequestRate
from llmq.api.tenancy.store_wait import StoreWait
from llmq.api.usage_booking import UsageBooker
from llmq.dispatcher.connection import NatsRefused, redact_url
from llmq.dispatcher.queue_estimate import QueueEstimator
from llmq.dispatcher.streams import ensure_usage_stream
from llmq.dispatcher.tasks import stop_task
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)


async def _open(app: FastAPI, settings: Settings, startup: Startup, undo: AsyncExitStack) -> None:
    """Connect, provision and build the serving parts; each part's stop is pushed on `undo`
    as soon as it runs, so a start cut short (SIGTERM, the deadline) stops what it began."""
    await _open_core(app, settings, startup, undo)
    await _open_features(app, settings, startup, undo)


def _reservations(runtime: Runtime, settings: Settings) -> Reservations:
    """The quota script caller, with this replica's leases (none in a Redis Cluster)."""
    tenancy = settings.tenancy
    quota = Quota(
        runtime.redis,
        lease=tenancy.reservation_lease,
        ledger_maxlen=tenancy.ledger_maxlen,
        tenant_ledger_maxlen=settings.storage.tenant_ledger_maxlen,
        ledger_max_age=settings.storage.ledger_max_age,
    )
    leases = None
    if tenancy.quota_leases and not is_cluster(runtime.redis):
        leases = Leases(tenancy.quota_lease_window, tenancy.quota_slot_grace)
    wait = StoreWait(runtime.redis.ping, tenancy.quota_store_wait)
    return Reservations(quota, tenancy.quota_fail_open, leases, wait)


async def _open_core(
    app: FastAPI, settings: Settings, startup: Startup, undo: AsyncExitStack
) -> None:
    """Connections, tenants and quotas, the model table and the chat serving path."""
    runtime = await Runtime.open(settings, startup)
    undo.push_async_callback(runtime.close)
    store = TenantStore(runtime.redis)
    reservations = _reservations(runtime, settings)
    reservations.start_renewal()  # durable work outlives the lease (docs/tenants.md)
    undo.push_async_callback(reservations.drain)
    models = ModelTable(settings)
    models.start()
    undo.push_async_callback(models.stop)
    if settings.api.auth_mode != "none":  # tenants live in Valkey: notice if it lost them
        marker = DataMarker(
            runtime.redis,
            runtime.js,
            redact_url(redis_target(settings.connection)),
            settings.protocol.nats_replicas,
            settings.connection.nats_provision,
        )
        marker.start()
        undo.push_async_callback(marker.stop)
        app.state.data_marker = marker
    app.state.runtime = runtime
    app.state.store = store
    app.state.usage = UsageReader(runtime.redis)
    app.state.models = models
    preparer = RequestPreparer(
        models,
        runtime.registry,
        settings.tenancy.default_max_tokens,
        max_n=settings.tenancy.max_n,
        max_output_tokens=settings.tenancy.max_output_tokens,
        waits=settings.api.no_worker_grace != 0,
    )
    queue_estimator = QueueEstimator(
        runtime.js, runtime.registry.live_workers, models.assumed_job_seconds
    )  # docs/routing.md
    queue_estimator.start()
    undo.push_async_callback(queue_estimator.stop)
    router = Router(models, runtime.registry, queue_estimator.wait_for)
    auth = Authenticator(settings, store, reservations.store_wait)
    app.state.serving = ChatServing(runtime, auth, reservations, preparer, router=router)
    app.state.auth_changes = AuthChanges(runtime.nc, auth)  # api/auth_changes.py
    await app.state.auth_changes.start()
    undo.push_async_callback(app.state.auth_changes.stop)
    rate = RequestRate(runtime.redis) if settings.api.auth_mode != "none" else None
    app.state.list_gate = ListGate(rate, settings.edge.list_concurrency)
    app.state.queue_estimator = queue_estimator
    queue_estimator.local = app.state.serving.fair  # a burst counts before a refresh
    app.state.reservations, app.state.preparer = reservations, preparer


async def _open_features(
    app: FastAPI, settings: Settings, startup: Startup, undo: AsyncExitStack
) -> None:
    """Observability, the batch wing, the Responses and Messages APIs, the console and
    usage booking."""
    runtime, reservations, preparer = app.state.runtime, app.state.reservations, app.state.preparer
    queue_estimator = app.state.queue_estimator
    # metrics + request log observers, `llmq-api` micro service
    app.state.observability = await Observability.start(runtime, app.state.serving, app.version)
    undo.push_async_callback(app.state.observability.stop)
    app.state.observability.metrics.queue_estimator = queue_estimator
    # async jobs, files and batches (docs/batch.md)
    app.state.batches = BatchWing(runtime, reservations, preparer)
    await startup.step("the batch streams and buckets", app.state.batches.start)
    undo.push_async_callback(app.state.batches.stop)
    # the Responses API and conversations (docs/responses.md)
    app.state.responses, app.state.conversations = await startup.step(
        "the responses buckets", lambda: open_responses(app.state.serving, app.state.batches)
    )
    undo.push_async_callback(app.state.responses.stop)
    app.state.messages = MessagesServing(app.state.serving)  # docs/anthropic.md
    app.state.endpoints = EndpointServing(app.state.serving)  # docs/endpoints.md
    # the response cache and joined requests, for every feature above (docs/cache.md)
    app.state.cache = cache = open_cache(runtime, app.state.models, app.state.store)
    undo.push_async_callback(cache.close)
    app.state.serving.reuse = cache
    app.state.batches.purgers.append(cache.purge)  # a deleted tenant's answers
    cache.writes.on_stored = app.state.observability.metrics.cache_stored
    console.attach(app, app.state.serving)
    app.state.serving.observers.append(api_tracing.finish)  # spans, if OTEL_* asks
    # usage the workers report, booked even when the relaying api died (docs/protocol.md)
    replicas = settings.protocol.nats_replicas
    create = settings.connection.nats_provision
    app.state.usage_booker = UsageBooker(runtime.js, reservations, replicas, create=create)
    await startup.step("the usage stream", app.state.usage_booker.start)
    undo.push_async_callback(app.state.usage_booker.stop)
    runtime.provisioner.add(
        "usage stream", lambda: ensure_usage_stream(runtime.js, replicas, create)
    )
    trimmer = MemoryTrimmer(settings.storage.malloc_trim_interval)  # api/memory_trim.py
    trimmer.start()
    undo.push_async_callback(trimmer.stop)


async def _start(app: FastAPI, settings: Settings, startup: Startup, undo: AsyncExitStack) -> None:
    """`_open`, then open the gate; a start given up is logged and ends the process."""
    try:
        await _open(app, settings, startup, undo)
    except Exception as exc:  # the deadline passed, NATS refused us, or a bug
        startup.failed = str(exc) or type(exc).__name__
        expected = isinstance(exc, TimeoutError | NatsRefused)
        log.error("the api gives up starting: %s", startup.failed, exc_info=not expected)
        app.state.on_start_failed()
        return
    undo.callback(freeze_after_start(settings.api.gc_freeze_threshold))  # api/collector.py
    startup.ready = True
    log.info("api %s ready", settings.api.instance_id)


STOP_LIMIT = 10.0
"""Seconds each part of the api may take to stop before the shutdown goes on without it."""


class StopStack(AsyncExitStack):
    """The api's parts, stopped in reverse order on shutdown, each within `STOP_LIMIT`: a part
    that hangs is named in the log and left behind, so the rest (NATS, Redis) still close and
    the process exits."""

    def push_async_callback(  # type: ignore[override]
        self, callback: Callable[..., Awaitable[object]], /, *args: Any, **kwds: Any
    ) -> Callable[..., Awaitable[object]]:
        async def bounded() -> None:
            task = asyncio.ensure_future(callback(*args, **kwds))
            done, _ = await asyncio.wait({task}, timeout=STOP_LIMIT)
            if not done:
                task.cancel()
                name = getattr(callback, "__qualname__", repr(callback))
                log.error(
                    "stopping %s outlasted %.0f s; shutting down without it", name, STOP_LIMIT
                )
                return
            task.result()

        super().push_async_callback(bounded)
        return callback


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The port opens at once; the connections are made in a task (api/startup.py)."""
        startup = Startup(settings)
        app.state.startup = startup
        async with StopStack() as undo:
            task = asyncio.create_task(_start(app, settings, startup, undo), name="api-start")
            try:
                yield
            finally:
                await stop_task(task)

    # /openapi.json and /docs describe the public API only; the admin API has its own
    # document behind the admin token (/admin/openapi.json).
    app = FastAPI(
        title="llmq",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if settings.edge.docs else None,  # Swagger UI loads from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.on_start_failed = lambda: None  # the server sets its exit (api/server.py)
    install_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "request-id", "retry-after", "x-ratelimit-*"],
        )
    _document_bodies(app)
    _include_routes(app)
    if settings.console.console_enabled:
        console.install(app)
    return app


def _include_routes(app: FastAPI) -> None:
    app.router.routes.extend(chat.hot.routes)  # as they are, matched first (routes/plain.py)
    app.router.routes.extend(messages.router.routes)  # Anthropic's Messages API, the same way
    # POST /v1/responses the same way; the responses router's route documents it
    app.router.routes.append(
        PlainRoute(
            "/v1/responses", responses.create_response, methods=["POST"], include_in_schema=False
        )
    )
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(admin.router, include_in_schema=False)
    app.include_router(metrics.router)
    app.include_router(job_routes.router)
    app.include_router(file_routes.router)
    app.include_router(batch_routes.router)
    app.include_router(responses.router)
    app.include_router(conversation_routes.router)
    app.include_router(endpoint_routes.router)


def _document_bodies(app: FastAPI) -> None:
    """`/openapi.json` with the request bodies the routes read (`api/openapi_bodies.py`)."""
    bodies = {
        **chat.BODIES,
        **job_routes.BODIES,
        **file_routes.BODIES,
        **batch_routes.BODIES,
        **responses.BODIES,
        **conversation_routes.BODIES,
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_bodies(FastAPI.openapi(app), bodies)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
