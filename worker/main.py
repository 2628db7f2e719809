"""The worker process: wires the feeds, scheduler, runner, breaker and registry together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg

from llmq import __version__
from llmq._fast import configure as configure_fast_paths
from llmq.dispatcher import streams
from llmq.dispatcher.connection import Provisioner, connect, disconnect, startup_deadline
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas import names
from llmq.schemas.registry import WorkerInfo
from llmq.schemas.settings import Settings
from llmq.worker.announce import LEAVE_TIMEOUT, Announcer
from llmq.worker.backends import create_backend
from llmq.worker.backends.base import Backend, BackendConfig
from llmq.worker.breaker import OPEN, CircuitBreaker
from llmq.worker.config import ConfigError, backend_config_from, describe
from llmq.worker.endpoints import endpoints_of
from llmq.worker.feed import PullFeed
from llmq.worker.job_time import JobTimes
from llmq.worker.messages.jobs import MessageJobs
from llmq.worker.metrics import JobBook, WorkerMetrics
from llmq.worker.responses_api.passthrough import passthrough_of
from llmq.worker.runner import JobOutcome, JobRunner
from llmq.worker.scheduler import Scheduler
from llmq.worker.service import WorkerService

log = logging.getLogger(__name__)

INTERACTIVE, BATCH = 0, 1
T = TypeVar("T")


def parse_models(specs: list[str]) -> dict[str, str]:
    """`public=upstream` pairs; a bare name maps to itself."""
    mapping: dict[str, str] = {}
    for spec in specs:
        public, _, upstream = spec.partition("=")
        mapping[public.strip()] = (upstream or public).strip()
    return mapping


class Worker:
    def __init__(self, settings: Settings, backend_config: BackendConfig | None = None) -> None:
        configure_fast_paths(settings.connection.fast_paths)
        self.settings = settings
        self.id = settings.worker.worker_id
        self.models = parse_models(settings.worker.model)
        self.backend_config = backend_config or backend_config_from(settings)
        self.backend: Backend = create_backend(self.backend_config)
        self.nc: Client | None = None
        self.provisioner = Provisioner()
        self.scheduler = Scheduler(
            settings.worker.capacity, self._run_job, settings.protocol.ack_wait
        )
        self.runner: JobRunner | None = None
        self.breaker = CircuitBreaker(
            settings.worker.breaker_threshold,
            settings.worker.breaker_probe_interval,
            self.backend.probe,
            self._on_circuit,
        )
        self.announcer: Announcer | None = None
        self.draining = False
        self.started_at = time.time()
        self.outcomes: dict[str, int] = {}
        self.jobs = JobBook(self.models)  # running jobs and counters: metrics, micro stats
        self.job_times = JobTimes(self.models)  # announced: the api's queue estimate
        self.jobs.listeners.append(self.job_times.record)
        self.metrics = WorkerMetrics(self.jobs, self.info, lambda: self.nc)
        self.service: WorkerService | None = None
        self._stopped = asyncio.Event()
        self._feed_specs: list[tuple[str, str, int]] = []
        self._feeds_stopped = False
        self._circuit_lock = asyncio.Lock()
        self._circuit_tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and provision, each step retried with backoff until the start-up deadline
        (a server still starting, a cluster forming, a stream not provisioned yet);
        cancelling it (SIGTERM while waiting) closes what it opened."""
        s = self.settings
        deadline = startup_deadline(s.connection)
        try:
            # first: the probes answer while NATS, or what `llmq provision` makes, is waited for
            await self.metrics.serve(
                s.observability.metrics_host,
                s.worker.metrics_port,
                s.observability.metrics_token,
                self.ready,
            )
            self.nc = nc = await connect(
                s.connection.nats_url,
                f"llmq-worker {self.id}",
                s.connection.nats_connect_timeout,
                on_reconnect=self.provisioner.reconnected,
                conn=s.connection,
                deadline=deadline,
            )
            await self._start_on(nc, deadline)
        except BaseException:
            await self.close()
            raise

    async def _start_on(self, nc: Client, deadline: float | None) -> None:
        s = self.settings

        def step(what: str, action: Callable[[], Awaitable[T]]) -> Awaitable[T]:
            return retry(action, f"worker {self.id} start: {what}", deadline=deadline)

        self.runner = JobRunner(
            nc,
            self.backend,
            self.id,
            self.models,
            s.protocol.ping_interval,
            max_deliver=s.protocol.max_deliver,
            on_outcome=self._on_outcome,
            track=self.jobs.track,
        )
        self.runner.responses_upstream = passthrough_of(s, self.backend_config)
        self.runner.messages = MessageJobs(self.backend, self.models, self.backend_config)
        self.runner.endpoints = endpoints_of(s, self.backend_config)
        await nc.subscribe(names.CANCEL_WILDCARD, cb=self._on_cancel)
        self._feed_specs = await step("its job consumers", self._provision_consumers)
        self.scheduler.feeds = await self._open_feeds()
        self.announcer = Announcer(
            nc.jetstream(),
            self.info,
            s.protocol.heartbeat,
            sorted(self.backend.kinds),
            s.protocol.nats_replicas,
            create=s.connection.nats_provision,
            endpoints=sorted(self.runner.endpoints.endpoints) if self.runner.endpoints else [],
        )
        await step("the worker registry", self.announcer.start)
        self.service = await WorkerService.open(nc, self.jobs, self.info, __version__)
        self.scheduler.start()
        self.provisioner.add("consumers", self._reprovision_consumers)
        self.provisioner.add("registry", self.announcer.provision)
        self.provisioner.start()
        log.info(
            "worker %s serving %s on %s, capacity %d",
            self.id,
            ", ".join(self.models),
            describe(self.backend_config),
            s.worker.capacity,
        )

    def ready(self) -> bool:
        """Taking jobs: connected, its feeds open, not draining (the `/ready` probe)."""
        nc = self.nc
        connected = nc is not None and nc.is_connected
        return connected and bool(self.scheduler.feeds) and not self.draining

    async def _provision_consumers(self) -> list[tuple[str, str, int]]:
        """The job streams and this worker's durable consumers on them, as feed specs."""
        assert self.nc is not None
        s, js = self.settings, self.nc.jetstream()
        await streams.ensure_streams(
            js, s.protocol.jobs_max_age, s.protocol.nats_replicas, s.connection.nats_provision
        )
        specs = []
        for model in self.models:
            for stream, priority in ((names.JOBS_STREAM, INTERACTIVE), (names.BATCH_STREAM, BATCH)):
                consumer = await streams.ensure_consumer(
                    js,
                    stream,
                    model,
                    s.protocol.ack_wait,
                    s.protocol.max_deliver,
                    replicas=s.protocol.nats_replicas,
                )
                specs.append((stream, consumer, priority))
        return specs

    async def _reprovision_consumers(self) -> None:
        """After a reconnect the server may have lost the consumers and our open pull
        requests: put the consumers back and ask afresh."""
        for feed in self.scheduler.feeds:
            feed.forget()
        await self._provision_consumers()
        self.scheduler.kick()

    async def _open_feeds(self) -> list[PullFeed]:
        """New pull feeds on every consumer of this worker (new inboxes: pull requests of
        stopped feeds are never counted again)."""
        assert self.nc is not None
        feeds = []
        for stream, consumer, priority in self._feed_specs:
            feed = PullFeed(
                self.nc,
                stream,
                consumer,
                priority=priority,
                lingering=priority == INTERACTIVE,
                expires=self.settings.worker.pull_expires,
                on_job=self.scheduler.on_job,
                on_change=self.scheduler.kick,
            )
            await feed.start()
            feeds.append(feed)
        return feeds

    async def drain(self) -> None:
        """Stop fetching, let in-flight jobs finish (bounded), leave the registry, disconnect."""
        if self.draining:
            return
        self.draining = True
        self.scheduler.pause()
        for feed in self.scheduler.feeds:
            await feed.stop()
        await self.scheduler.hand_back_held()
        if self.announcer is not None and self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):  # bounded: NATS may go away
                    await self.announcer.beat()
        finished = await self.scheduler.wait_idle(self.settings.worker.drain_timeout)
        if not finished:
            log.warning("drain timeout: handing back %d jobs", self.scheduler.in_flight)
            if self.runner is not None:
                self.runner.shutting_down = True
            self.scheduler.cancel_all()
            await self.scheduler.wait_idle(2.0)
        await self.close()

    async def close(self) -> None:
        if self._stopped.is_set():
            return
        await self.provisioner.stop()
        await self.scheduler.stop()
        await self.breaker.stop()
        for task in list(self._circuit_tasks):
            await stop_task(task)
        if self.announcer is not None:
            await self.announcer.stop(leave=self.nc is not None and self.nc.is_connected)
        if self.service is not None:
            await self.service.close()
        await self.metrics.stop()
        if self.nc is not None:
            await disconnect(self.nc)
        await self.backend.aclose()
        if self.runner is not None and self.runner.responses_upstream is not None:
            await self.runner.responses_upstream.aclose()
        if self.runner is not None and self.runner.messages is not None:
            await self.runner.messages.aclose()
        if self.runner is not None and self.runner.endpoints is not None:
            await self.runner.endpoints.aclose()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # --- state -------------------------------------------------------------------------

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            backend=self.backend_config.kind,
            models=list(self.models),
            capacity=self.settings.worker.capacity,
            in_flight=self.scheduler.in_flight,
            circuit=self.breaker.state,
            draining=self.draining,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            version=__version__,
            metrics_url=self.metrics.url,
            job_seconds=dict(self.job_times.seconds),
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
        self.jobs.record(outcome)
        if outcome.outcome not in ("cancelled", "expired", "dropped"):
            self.breaker.record(outcome.backend_failed)

    def _on_circuit(self, state: str) -> None:
        if state == OPEN:
            self.scheduler.pause()  # at once; the feeds are stopped next
        task = asyncio.get_running_loop().create_task(self._apply_circuit())
        self._circuit_tasks.add(task)
        task.add_done_callback(self._circuit_tasks.discard)

    async def _apply_circuit(self) -> None:
        """Open: stop the feeds, which also withdraws their pending pull requests (the server
        drops requests whose reply subject lost interest), so no job waits on this worker.
        Half-open or closed: fresh feeds, fetch again. Then tell the registry."""
        async with self._circuit_lock:
            state = self.breaker.state
            if state == OPEN and not self._feeds_stopped:
                self._feeds_stopped = True
                self.scheduler.pause()
                for feed in self.scheduler.feeds:
                    with contextlib.suppress(Exception):
                        await feed.stop()
            elif state != OPEN and self._feeds_stopped and not self.draining:
                self._feeds_stopped = False
                try:
                    self.scheduler.feeds = await self._open_feeds()
                except Exception as exc:
                    log.warning("could not restart the pull feeds (%s); retrying in 1 s", exc)
                    self._feeds_stopped = True
                    asyncio.get_running_loop().call_later(1.0, self._on_circuit, state)
                    return
                self.scheduler.resume()
            elif state != OPEN and not self.draining:
                self.scheduler.resume()
            if self.announcer is not None:
                with contextlib.suppress(Exception):
                    await self.announcer.beat()


async def run_worker(settings: Settings, backend_config: BackendConfig | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain. A signal while the worker still waits for NATS
    (or its streams) stops the waiting at once."""
    import signal

    if settings.observability.log_level.upper() != "DEBUG":
        # httpx logs every upstream call at INFO: one line per job is noise (failures are
        # logged by the worker itself).
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        worker = Worker(settings, backend_config)
    except ConfigError as exc:
        log.error("cannot start the worker: %s", exc)
        raise SystemExit(2) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(worker.start(), name="worker-start")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("worker %s stopped before it started", worker.id)
        await stop_task(starting)
        await worker.close()
        return
    stopping.cancel()
    try:
        starting.result()
    except TimeoutError as exc:
        log.error("worker %s gives up starting: %s", worker.id, exc)
        raise SystemExit(3) from None
    await stop.wait()
    log.info("draining worker %s", worker.id)
    await worker.drain()
