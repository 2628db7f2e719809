"""What a worker tells operators about its jobs: the running-job book (read by the NATS micro
service and by `llmq jobs`) and its Prometheus `/metrics`.

Every job runs inside `JobBook.track` and ends with one `JobOutcome` passed to
`JobBook.record`: the single place where job counts, errors and timings are kept. Both get
the job's envelope, which says its stream and the model it was queued for. A job is timed
from its start to the end of its stream (the runner returns only once the last frame is
sent), never just to a first reply.

Label values are bounded: models are the worker's own (anything else is `other`), streams
are two, outcomes a fixed set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.aio.client import Client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from llmq.dispatcher.connection import ConnectionMetrics
from llmq.schemas import names
from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.registry import WorkerInfo
from llmq.worker.metrics_server import MetricsServer
from llmq.worker.runner import JobOutcome

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "error", "upstream_error", "retried", "cancelled", "expired", "dropped")
ERROR_OUTCOMES = frozenset({"error", "upstream_error", "retried"})
"""Outcomes that count as errors in the micro service stats (the job failed here)."""
NOT_RUN = frozenset({"expired", "dropped"})
"""Outcomes of jobs dropped before their backend was called."""
CIRCUIT_STATES = ("closed", "half-open", "open")
OTHER = "other"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

Source = tuple[str, str]
"""(stream, model) a job came from."""

disable_created_metrics()  # no `_created` series: half the lines, nothing a dashboard uses


@dataclass(slots=True)
class RunningJob:
    job_id: str
    stream: str
    model: str
    tenant: str
    started: float
    """Unix seconds."""
    deadline: float = 0.0
    """Unix seconds; 0 = none."""


@dataclass(slots=True)
class JobCounters:
    """One (stream, model) pair, as the micro service's STATS report it."""

    requests: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str = ""


class _Tracked:
    """`JobBook.track`'s context: a plain class, cheaper per job than a generator's."""

    __slots__ = ("_job", "_running")

    def __init__(self, running: dict[str, RunningJob], job: RunningJob) -> None:
        self._running = running
        self._job = job

    def __enter__(self) -> None:
        self._running[self._job.job_id] = self._job

    def __exit__(self, *_: object) -> None:
        job = self._job
        if self._running.get(job.job_id) is job:
            del self._running[job.job_id]


class JobBook:
    """Running jobs and per-(stream, model) job counters of one worker."""

    def __init__(self, models: Iterable[str]) -> None:
        self.models = list(models)
        self._known = frozenset(self.models)
        self.running: dict[str, RunningJob] = {}
        self.counters: dict[Source, JobCounters] = {
            (stream, model): JobCounters()
            for model in self.models
            for stream in (names.JOBS_STREAM, names.BATCH_STREAM)
        }
        self.listeners: list[Callable[[JobOutcome, str, str], None]] = []

    def model_label(self, model: str) -> str:
        if model in self._known:
            return model
        return self.models[0] if len(self.models) == 1 else OTHER

    def source(self, job: JobEnvelope) -> Source:
        return job.stream, self.model_label(job.model)

    def track(self, job: JobEnvelope) -> _Tracked:
        """Around one job's run: it counts as running."""
        stream, model = self.source(job)
        running = RunningJob(job.id, stream, model, job.tenant, time.time(), job.deadline)
        return _Tracked(self.running, running)

    def record(self, outcome: JobOutcome) -> None:
        stream, model = self.source(outcome.job)
        counters = self.counters.get((stream, model))
        if counters is None:
            counters = self.counters.setdefault((stream, model), JobCounters())
        counters.requests += 1
        if outcome.outcome in ERROR_OUTCOMES:
            counters.errors += 1
            counters.last_error = f"{outcome.outcome} (job {outcome.job_id})"
        if outcome.started and outcome.ended >= outcome.started:
            counters.processing_ns += int((outcome.ended - outcome.started) * 1e9)
        for listener in self.listeners:
            try:
                listener(outcome, stream, model)
            except Exception:
                log.exception("job outcome listener failed")

    def in_flight(self) -> dict[Source, int]:
        counts: dict[Source, int] = {}
        for job in self.running.values():
            key = (job.stream, job.model)
            counts[key] = counts.get(key, 0) + 1
        return counts


# --- Prometheus ------------------------------------------------------------------------------


class _LiveState(Collector):
    """Gauges read at scrape time: in-flight, capacity, circuit, draining, identity."""

    def __init__(self, book: JobBook, snapshot: Callable[[], WorkerInfo]) -> None:
        self._book = book
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []  # not read at registration: the state may not exist yet

    def collect(self) -> Iterable[Metric]:
        info = self._snapshot()
        yield GaugeMetricFamily(
            "llmq_worker_in_flight", "Jobs this worker is running now.", value=info.in_flight
        )
        by_model = GaugeMetricFamily(
            "llmq_worker_model_in_flight",
            "Jobs running now, by model and stream.",
            labels=["model", "stream"],
        )
        counts = self._book.in_flight()
        for model in self._book.models:
            for stream in (names.JOBS_STREAM, names.BATCH_STREAM):
                by_model.add_metric([model, stream], counts.get((stream, model), 0))
        yield by_model
        yield GaugeMetricFamily(
            "llmq_worker_capacity", "Most jobs this worker runs at once.", value=info.capacity
        )
        circuit = GaugeMetricFamily(
            "llmq_worker_circuit_state",
            "Backend circuit breaker: 1 for the current state.",
            labels=["state"],
        )
        for state in CIRCUIT_STATES:
            circuit.add_metric([state], 1.0 if info.circuit == state else 0.0)
        yield circuit
        yield GaugeMetricFamily(
            "llmq_worker_draining",
            "1 while the worker drains after SIGTERM.",
            value=1.0 if info.draining else 0.0,
        )
        identity = InfoMetricFamily("llmq_worker", "This worker's identity.")
        identity.add_metric(
            [], {"worker_id": info.id, "backend": info.backend, "version": info.version}
        )
        yield identity


@dataclass(slots=True)
class _ModelSeries:
    """One model's labelled series."""

    backend_seconds: Histogram
    ttft: Histogram
    tokens_in: Counter
    tokens_out: Counter


class WorkerMetrics:
    """A worker's own Prometheus registry (one per Worker, so several fit in one process)."""

    def __init__(
        self,
        book: JobBook,
        snapshot: Callable[[], WorkerInfo],
        connection: Callable[[], Client | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter(
            "llmq_worker_jobs",
            "Jobs ended, by model, stream and outcome.",
            ["model", "stream", "outcome"],
            registry=self.registry,
        )
        self.backend_seconds = Histogram(
            "llmq_worker_backend_duration_seconds",
            "Seconds from a job's start to the end of its stream (backend calls only).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmq_worker_time_to_first_token_seconds",
            "Seconds from a job's start to the backend's first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "llmq_worker_tokens",
            "Tokens processed, by model and direction (in = prompt, out = completion).",
            ["model", "direction"],
            registry=self.registry,
        )
        self.repeated_calls = Counter(
            "llmq_worker_repeated_upstream_calls",
            "Backend calls for a job delivered more than once (it may have run before).",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(_LiveState(book, snapshot))
        self.registry.register(ConnectionMetrics(connection))
        for model in book.models:  # every series exists from the start
            for stream in (names.JOBS_STREAM, names.BATCH_STREAM):
                for outcome in ("ok", "error", "upstream_error"):
                    self.jobs.labels(model, stream, outcome)
            self.repeated_calls.labels(model)
        book.listeners.append(self.observe)
        self.server: MetricsServer | None = None
        self._job_counts: dict[tuple[str, str, str], Counter] = {}
        self._per_model: dict[str, _ModelSeries] = {}
        """The labelled series, looked up once each (`labels()` costs a lock and a tuple per
        call); the label values are bounded (see the module's docstring), so are these."""

    def _model(self, model: str) -> _ModelSeries:
        series = self._per_model.get(model)
        if series is None:
            series = self._per_model[model] = _ModelSeries(
                self.backend_seconds.labels(model),
                self.ttft.labels(model),
                self.tokens.labels(model, "in"),
                self.tokens.labels(model, "out"),
            )
        return series

    def observe(self, outcome: JobOutcome, stream: str, model: str) -> None:
        kind = outcome.outcome if outcome.outcome in OUTCOMES else OTHER
        jobs = self._job_counts.get((model, stream, kind))
        if jobs is None:
            jobs = self._job_counts[model, stream, kind] = self.jobs.labels(model, stream, kind)
        jobs.inc()
        if kind in NOT_RUN or not outcome.started:
            return
        if outcome.delivery > 1:
            self.repeated_calls.labels(model).inc()
        series = self._model(model)
        if outcome.ended >= outcome.started:
            series.backend_seconds.observe(outcome.ended - outcome.started)
        if outcome.first_token is not None:
            series.ttft.observe(max(0.0, outcome.first_token - outcome.started))
        usage = outcome.usage
        if usage.prompt_tokens:
            series.tokens_in.inc(usage.prompt_tokens)
        if usage.completion_tokens:
            series.tokens_out.inc(usage.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(
        self, host: str, port: int, token: str = "", ready: Callable[[], bool] = lambda: True
    ) -> None:
        """Serve `/metrics`, `/health` and `/ready` on `host:port`; port 0 means off. With a
        `token`, a scrape must send it as a bearer token (the probes need none)."""
        if port:
            self.server = await asyncio.to_thread(
                MetricsServer.start, self.registry, host, port, token, ready
            )

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else ""

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await asyncio.to_thread(server.stop)
