"""The FastAPI application: lifespan (connections), routes, error handlers, CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from llmq import __version__
from llmq.api import tracing as api_tracing
from llmq.api.auth import Authenticator
from llmq.api.batch import batch_routes, file_routes, job_routes
from llmq.api.batch.wing import BatchWing
from llmq.api.chat import routes as chat
from llmq.api.chat.serving import ChatServing
from llmq.api.console import app as console
from llmq.api.engine.model_chain import Router
from llmq.api.errors import install_error_handlers
from llmq.api.model_table import ModelTable
from llmq.api.observability import Observability
from llmq.api.preparation import RequestPreparer
from llmq.api.reservations import Reservations
from llmq.api.responses import conversation_routes
from llmq.api.responses import routes as responses
from llmq.api.responses.serving import open_responses
from llmq.api.routes import admin, health, metrics, models
from llmq.api.routes.plain import PlainRoute
from llmq.api.runtime import Runtime
from llmq.api.tenancy import Quota, TenantStore, UsageReader
from llmq.api.usage_booking import UsageBooker
from llmq.dispatcher.queue_estimate import QueueEstimator
from llmq.dispatcher.streams import ensure_usage_stream
from llmq.schemas.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _open_core(app, settings)
        await _open_features(app, settings)
        try:
            yield
        finally:
            await _close(app)

    # /openapi.json and /docs describe the public API only; the admin API has its own
    # document behind the admin token (/admin/openapi.json).
    app = FastAPI(
        title="llmq", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None
    )
    app.state.settings = settings
    install_error_handlers(app)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "x-ratelimit-*"],
        )
    _include_routes(app)
    if settings.console.console_enabled:
        console.install(app)
    return app


async def _open_core(app: FastAPI, settings: Settings) -> None:
    """Connections, tenants and quotas, the model table and the chat serving path."""
    runtime = await Runtime.open(settings)
    app.state.runtime = runtime
    store = TenantStore(runtime.redis)
    quota = Quota(
        runtime.redis,
        lease=settings.tenancy.reservation_lease,
        ledger_maxlen=settings.tenancy.ledger_maxlen,
    )
    reservations = app.state.reservations = Reservations(quota, settings.tenancy.quota_fail_open)
    reservations.start_renewal()  # durable work outlives the lease (docs/tenants.md)
    models = app.state.models = ModelTable(settings)
    models.start()
    app.state.store = store
    app.state.usage = UsageReader(runtime.redis)
    app.state.preparer = RequestPreparer(
        models,
        runtime.registry,
        settings.tenancy.default_max_tokens,
        max_n=settings.tenancy.max_n,
        max_output_tokens=settings.tenancy.max_output_tokens,
    )
    queue_estimator = app.state.queue_estimator = QueueEstimator(
        runtime.js, runtime.registry.live_workers
    )  # docs/routing.md
    queue_estimator.start()
    router = Router(models, runtime.registry, queue_estimator.wait_for)
    app.state.serving = ChatServing(
        runtime, Authenticator(settings, store), reservations, app.state.preparer, router=router
    )


async def _open_features(app: FastAPI, settings: Settings) -> None:
    """Observability, the batch wing, the Responses API, the console and usage booking."""
    runtime, serving, reservations = app.state.runtime, app.state.serving, app.state.reservations
    # metrics + request log observers, `llmq-api` micro service
    app.state.observability = await Observability.start(runtime, serving, app.version)
    app.state.observability.metrics.queue_estimator = app.state.queue_estimator
    # async jobs, files and batches (docs/batch.md)
    app.state.batches = BatchWing(runtime, reservations, app.state.preparer)
    await app.state.batches.start()
    # the Responses API and conversations (docs/responses.md)
    app.state.responses, app.state.conversations = await open_responses(serving, app.state.batches)
    console.attach(app, serving)
    serving.observers.append(api_tracing.finish)  # spans, if OTEL_* asks
    # usage the workers report, booked even when the relaying api died (docs/protocol.md)
    replicas = settings.protocol.nats_replicas
    create = settings.connection.nats_provision
    app.state.usage_booker = UsageBooker(runtime.js, reservations, replicas, create=create)
    await app.state.usage_booker.start()
    runtime.provisioner.add(
        "usage stream", lambda: ensure_usage_stream(runtime.js, replicas, create)
    )


async def _close(app: FastAPI) -> None:
    """Stop what the lifespan opened, newest first."""
    state = app.state
    await state.usage_booker.stop()
    await state.responses.stop()
    await state.batches.stop()
    await state.observability.stop()
    await state.models.stop()
    await state.queue_estimator.stop()
    await state.reservations.drain()
    await state.runtime.close()


def _include_routes(app: FastAPI) -> None:
    app.router.routes.extend(chat.hot.routes)  # as they are, matched first (routes/plain.py)
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
