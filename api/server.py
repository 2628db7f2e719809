"""Running the api under uvicorn (uvloop + httptools when available)."""

from __future__ import annotations

import math
import signal
from types import FrameType

import uvicorn

from llmq import event_loop
from llmq._fast import configure as configure_fast_paths
from llmq._fast import starlette as fast_starlette
from llmq.api.app import create_app
from llmq.api.edge import EdgeLimits, EdgeProtocol, connection_cap
from llmq.api.hot_paths import HotPaths
from llmq.api.startup import StartGate
from llmq.schemas.settings import Settings


class ApiServer(uvicorn.Server):
    """uvicorn, but SIGTERM is a normal, graceful stop (exit 0), not a re-raised signal.

    On the first SIGTERM/SIGINT the api stops accepting connections, `/ready` turns 503 and
    open streams get `shutdown_grace` seconds to finish.
    """

    start_failed = False
    """The app gave up starting (NATS refused it, the start-up deadline passed)."""

    def start_failed_now(self) -> None:
        self.start_failed = True
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = getattr(getattr(self.config.app, "state", None), "runtime", None)
        if runtime is not None:
            runtime.accepting = False
        super().handle_exit(sig, frame)
        if sig in (signal.SIGTERM, signal.SIGINT) and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def edge_limits(settings: Settings) -> EdgeLimits:
    api = settings.edge
    return EdgeLimits(
        max_header_bytes=api.max_header_bytes,
        max_header_count=api.max_header_count,
        header_timeout=api.header_timeout,
        body_timeout=api.body_timeout,
        max_connections=connection_cap(api.max_connections),
    )


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    configure_fast_paths(settings.connection.fast_paths)
    created = create_app(settings)
    # the hot routes ahead of the middleware stack, while the Starlette gate is open
    app = HotPaths(created) if fast_starlette.GATE.open else created
    return uvicorn.Config(
        StartGate(app, app.state),  # answers for the app while it starts (api/startup.py)
        host=settings.api.host,
        port=settings.api.port,
        loop="uvloop" if event_loop.AVAILABLE else "asyncio",
        http=EdgeProtocol.with_limits(edge_limits(settings)),  # api/edge.py
        timeout_keep_alive=math.ceil(settings.edge.keep_alive_timeout),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.api.shutdown_grace),  # int: 0.5 s is not 0
        lifespan="on",
    )


def run_api(settings: Settings) -> bool:
    """Serve until stopped; False when the app never started (NATS refused it, the start-up
    deadline passed)."""
    config = uvicorn_config(settings)
    assert isinstance(config.app, StartGate)
    server = ApiServer(config)
    config.app.state.on_start_failed = server.start_failed_now
    server.run()
    return server.started and not server.start_failed
