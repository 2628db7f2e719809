"""The worker process: wires the feeds, scheduler, runner, breaker and registry together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from dispatcher import streams
from dispatcher.connection import connect
from schemas import names
from schemas.registry import WorkerInfo
from schemas.settings import Settings
from worker.announce import Announcer
from worker.backends import create_backend
from worker.backends.base import Backend, BackendConfig
from worker.breaker import CircuitBreaker
from worker.feed import PullFeed
from worker.runner import JobOutcome, JobRunner
from worker.scheduler import Scheduler

log = logging.getLogger(__name__)

VERSION = "0.1.0"
INTERACTIVE, BATCH = 0, 1


def parse_models(specs: list[str]) -> dict[str, str]:
    """`public=upstream` pairs; a bare name maps to itself."""
    mapping: dict[str, str] = {}
    for spec in specs:
        public, _, upstream = spec.partition("=")
        mapping[public.strip()] = (upstream or public).strip()
    return mapping


class Worker:
    def __init__(self, settings: Settings, backend_config: BackendConfig | None = None) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.models = parse_models(settings.model)
        self.backend_config = backend_config or BackendConfig(
            kind=settings.backend, echo_delay=settings.echo_delay
        )
        self.backend: Backend = create_backend(self.backend_config)
        self.nc: Client | None = None
        self.scheduler = Scheduler(settings.capacity, self._run_job, settings.ack_wait)
        self.runner: JobRunner | None = None
        self.breaker = CircuitBreaker(
            settings.breaker_threshold,
            settings.breaker_probe_interval,
            self.backend.probe,
            self._on_circuit,
        )
        self.announcer: Announcer | None = None
        self.draining = False
        self.started_at = time.time()
        self.outcomes: dict[str, int] = {}
        self._stopped = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.nc = nc = await connect(s.nats_url, f"llmq-worker {self.id}", s.nats_connect_timeout)
        js = nc.jetstream()
        await streams.ensure_streams(js, s.jobs_max_age)
        self.runner = JobRunner(
            nc, self.backend, self.id, self.models, s.ping_interval, s.max_deliver, self._on_outcome
        )
        await nc.subscribe(names.CANCEL_WILDCARD, cb=self._on_cancel)
        for model in self.models:
            for stream, priority in ((names.JOBS_STREAM, INTERACTIVE), (names.BATCH_STREAM, BATCH)):
                consumer = await streams.ensure_consumer(
                    js, stream, model, s.ack_wait, s.max_deliver
                )
                feed = PullFeed(
                    nc, stream, consumer,
                    priority=priority,
                    lingering=priority == INTERACTIVE,
                    expires=s.pull_expires,
                    on_job=self.scheduler.on_job,
                    on_change=self.scheduler.kick,
                )  # fmt: skip
                await feed.start()
                self.scheduler.feeds.append(feed)
        self.announcer = Announcer(js, self.info, s.heartbeat, sorted(self.backend.kinds))
        await self.announcer.start()
        self.scheduler.start()
        log.info(
            "worker %s serving %s on %s backend, capacity %d",
            self.id, ", ".join(self.models), self.backend_config.kind, s.capacity,
        )  # fmt: skip

    async def drain(self) -> None:
        """Stop fetching, let in-flight jobs finish (bounded), leave the registry, disconnect."""
        if self.draining:
            return
        self.draining = True
        self.scheduler.pause()
        for feed in self.scheduler.feeds:
            await feed.stop()
        if self.announcer is not None:
            with contextlib.suppress(Exception):
                await self.announcer.beat()
        finished = await self.scheduler.wait_idle(self.settings.drain_timeout)
        if not finished:
            log.warning("drain timeout: cancelling %d jobs", self.scheduler.in_flight)
            self.scheduler.cancel_all()
            await self.scheduler.wait_idle(2.0)
        await self.close()

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.breaker.stop()
        if self.announcer is not None:
            await self.announcer.stop()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.backend.aclose()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # --- state -------------------------------------------------------------------------

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            backend=self.backend_config.kind,
            models=list(self.models),
            capacity=self.settings.capacity,
            in_flight=self.scheduler.in_flight,
            circuit=self.breaker.state,
            draining=self.draining,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            version=VERSION,
        )

    # --- callbacks ---------------------------------------------------------------------

    async def _run_job(self, msg: Msg) -> None:
        assert self.runner is not None
        await self.runner.run(msg)

    async def _on_cancel(self, msg: Msg) -> None:
        if self.runner is not None:
            self.runner.cancel(msg.subject[len(names.CANCEL_PREFIX) + 1 :])

    def _on_outcome(self, outcome: JobOutcome) -> None:
        self.outcomes[outcome.outcome] = self.outcomes.get(outcome.outcome, 0) + 1
        if outcome.outcome not in ("cancelled", "expired", "dropped"):
            self.breaker.record(outcome.backend_failed)

    def _on_circuit(self, state: str) -> None:
        if state == "open":
            self.scheduler.pause()
        elif not self.draining:
            self.scheduler.resume()
        if self.announcer is not None:
            asyncio.get_running_loop().create_task(self.announcer.beat())


async def run_worker(settings: Settings, backend_config: BackendConfig | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    import signal

    worker = Worker(settings, backend_config)
    await worker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining worker %s", worker.id)
    await worker.drain()
