"""The api's Prometheus metrics, fed by one `RequestRecord` per request (a serving observer).

Label values stay bounded: `route` and `status` come from fixed sets, `model` is a name
from the model catalog (anything else, such as the model of a 404, is `other`), the quota
reason is one of the refusal codes, and `tenant` is a label only when
`metrics_tenant_label` is on, for at most `metrics_max_tenants` names (the rest: `other`).

Queue depth and pending acks per model come from JetStream consumer info, fetched at most
once per `metrics_queue_ttl` seconds, when `/metrics` is scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from llmq.api.request_record import RequestRecord
from llmq.api.runtime import Runtime
from llmq.dispatcher.connection import ConnectionMetrics
from llmq.dispatcher.probes import QueueState, queue_states
from llmq.dispatcher.queue_estimate import QueueEstimator

log = logging.getLogger(__name__)

disable_created_metrics()  # no `_created` series: half the lines, nothing a dashboard uses

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"
QUOTA_REASONS = frozenset(
    {
        "rate_limit_exceeded",
        "insufficient_quota",
        "suspended",
        "model_not_allowed",
        "unknown_tenant",
        "quota_store_down",
    }
)
"""Error codes of requests refused by admission (quota and tenant state)."""

LATENCY_BUCKETS = (
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
TTFT_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
QUEUE_TIMEOUT = 2.0
"""Seconds a scrape waits for JetStream consumer info before serving the cached values."""


class _Live(Collector):
    """Read at scrape time: open streams, queues (cached), workers per model, identity."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # not read at registration: the state may not exist yet

    def collect(self) -> Iterable[Metric]:
        m = self._m
        rt = m.runtime
        yield GaugeMetricFamily(
            "llmq_api_open_streams", "SSE streams open now.", value=rt.open_streams
        )
        yield GaugeMetricFamily(
            "llmq_api_accepting", "1 while the api accepts requests.", value=float(rt.accepting)
        )
        yield from self._queues()
        yield from self._models()
        yield from self._estimates()
        identity = InfoMetricFamily("llmq_api", "This api process.")
        identity.add_metric([], {"instance": rt.settings.api.instance_id, "version": m.version})
        yield identity

    def _queues(self) -> Iterable[Metric]:
        m = self._m
        depth = GaugeMetricFamily(
            "llmq_queue_depth",
            "Jobs queued and not yet delivered to a worker (JetStream num_pending).",
            labels=["model", "stream"],
        )
        acks = GaugeMetricFamily(
            "llmq_queue_pending_acks",
            "Jobs delivered to a worker and not yet acked (JetStream num_ack_pending).",
            labels=["model", "stream"],
        )
        waiting = GaugeMetricFamily(
            "llmq_queue_waiting_pulls",
            "Open pull requests, i.e. free worker slots asking for jobs (num_waiting).",
            labels=["model", "stream"],
        )
        for q in m.queues:
            labels = [m.model_label(q.model), q.stream]
            depth.add_metric(labels, q.pending)
            acks.add_metric(labels, q.ack_pending)
            waiting.add_metric(labels, q.waiting)
        yield depth
        yield acks
        yield waiting
        yield GaugeMetricFamily(
            "llmq_queue_stats_age_seconds",
            "Age of the cached queue figures.",
            value=time.monotonic() - m.queues_at if m.queues_at else -1.0,
        )

    def _models(self) -> Iterable[Metric]:
        m = self._m
        workers = GaugeMetricFamily(
            "llmq_model_workers", "Live workers serving the model.", labels=["model"]
        )
        capacity = GaugeMetricFamily(
            "llmq_model_capacity", "Job slots of the live workers serving it.", labels=["model"]
        )
        for model, serving in sorted(m.runtime.registry.live_models().items()):
            label = m.model_label(model)
            workers.add_metric([label], len(serving))
            capacity.add_metric([label], sum(w.capacity for w in serving))
        yield workers
        yield capacity

    def _estimates(self) -> Iterable[Metric]:
        m = self._m
        estimator = m.queue_estimator
        if estimator is None:
            return
        wait = GaugeMetricFamily(
            "llmq_queue_wait_estimate_seconds",
            "Estimated seconds a job queued now waits for a worker (-1: not known yet).",
            labels=["model"],
        )
        rate = GaugeMetricFamily(
            "llmq_queue_service_rate",
            "Jobs started per second while the model's queue was busy (-1: not measured).",
            labels=["model"],
        )
        for model, state in sorted(estimator.models.items()):
            named = [m.model_label(model)]
            seconds = estimator.wait_for(model)  # as admission sees it: this replica's load too
            wait.add_metric(named, -1.0 if seconds is None else seconds)
            rate.add_metric(named, -1.0 if state.rate is None else state.rate)
        yield wait
        yield rate


class ApiMetrics:
    """One registry per app (several apps may share a process in tests)."""

    def __init__(self, runtime: Runtime, version: str = "") -> None:
        self.runtime = runtime
        self.version = version
        settings = runtime.settings
        self.tenant_label = settings.observability.metrics_tenant_label
        self.max_tenants = settings.observability.metrics_max_tenants
        self.queue_ttl = settings.observability.metrics_queue_ttl
        self._tenants: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_metrics(["tenant"] if self.tenant_label else [])
        self.registry.register(_Live(self))
        self.registry.register(ConnectionMetrics(lambda: runtime.nc))
        self.queue_estimator: QueueEstimator | None = None
        """Set by the app: the admission's queue estimates (docs/routing.md)."""
        self.queues: list[QueueState] = []
        self.queues_at = 0.0
        self._queue_lock = asyncio.Lock()
        # Children cached by label values: `labels()` takes a lock and builds a key each time.
        self._children: dict[tuple[Any, ...], Any] = {}
        # Counters the api's micro service reports (`nats micro stats llmq-api`).
        self.count = 0
        self.errors = 0
        self.busy_ns = 0
        self.last_error = ""

    def _request_metrics(self, tenant: list[str]) -> None:
        """The metrics every request feeds (`observe`); `tenant`: the tenant label, if on."""
        self.requests = Counter(
            "llmq_api_requests",
            "Requests ended, by route, model and HTTP status.",
            ["route", "model", "status", *tenant],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmq_api_request_duration_seconds",
            "Seconds from request to the end of its response (the stream's end for SSE).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmq_api_time_to_first_token_seconds",
            "Seconds from request to the first chunk relayed (streamed requests).",
            ["route", "model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "llmq_api_tokens",
            "Tokens by model and direction (in = prompt, out = completion).",
            ["model", "direction", *tenant],
            registry=self.registry,
        )
        self.rejections = Counter(
            "llmq_api_quota_rejections",
            "Requests refused by admission, by reason.",
            ["reason", *tenant],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "llmq_api_fallbacks",
            "Requests moved from a model to its next fallback, by cause (docs/routing.md).",
            ["model", "to", "cause"],
            registry=self.registry,
        )
        self.omitted = Counter(
            "llmq_api_omitted_tools",
            "Built-in tools left out of Responses requests (the model table's builtin_tools).",
            ["model", "tool"],
            registry=self.registry,
        )
        self._cache_metrics(tenant)

    def _cache_metrics(self, tenant: list[str]) -> None:
        """The response cache's metrics (`observe`, `cache_stored`)."""
        self.cache = Counter(
            "llmq_api_cache_requests",
            "Requests by the response cache's part (hit, miss, join, skip), by model.",
            ["model", "outcome", *tenant],
            registry=self.registry,
        )
        self.cache_bytes = Counter(
            "llmq_api_cache_stored_bytes",
            "Bytes of answers written to the response cache, by model.",
            ["model"],
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "llmq_api_cache_evictions",
            "Cached answers evicted to keep a tenant within its cache bounds, by model.",
            ["model"],
            registry=self.registry,
        )

    # --- labels --------------------------------------------------------------------------

    def model_label(self, model: str) -> str:
        if not model:
            return ""
        return model if self.runtime.registry.known(model) else OTHER

    def tenant_of(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < self.max_tenants:
            self._tenants.add(tenant)
            return tenant
        return OTHER

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- the observer --------------------------------------------------------------------

    def observe(self, r: RequestRecord) -> None:
        model = self.model_label(r.model)
        extra = (self.tenant_of(r.tenant),) if self.tenant_label else ()
        self._child(self.requests, r.route, model, str(r.status), *extra).inc()
        self._child(self.latency, r.route, model).observe(r.latency)
        if r.ttft is not None:
            self._child(self.ttft, r.route, model).observe(r.ttft)
        if r.prompt_tokens:
            self._child(self.tokens, model, "in", *extra).inc(r.prompt_tokens)
        if r.completion_tokens:
            self._child(self.tokens, model, "out", *extra).inc(r.completion_tokens)
        for origin, to, cause in r.fallbacks:
            self._child(self.fallbacks, self.model_label(origin), self.model_label(to), cause).inc()
        for tool in r.omitted:
            self._child(self.omitted, model, tool).inc()
        if r.cache:
            self._child(self.cache, model, r.cache, *extra).inc()
        code = r.error_code
        if code is not None and code in QUOTA_REASONS:
            self._child(self.rejections, code, *extra).inc()
        self.count += 1
        self.busy_ns += int(r.latency * 1e9)
        if r.status >= 500:
            self.errors += 1
            self.last_error = f"{r.status} {code or ''}".strip()

    def cache_stored(self, model: str, written: int, evicted: int) -> None:
        """A response-cache write (api/cache/): the bytes stored and the entries evicted."""
        label = self.model_label(model)
        if written:
            self._child(self.cache_bytes, label).inc(written)
        if evicted:
            self._child(self.cache_evictions, label).inc(evicted)

    # --- scraping ------------------------------------------------------------------------

    async def refresh_queues(self) -> None:
        """Consumer info from JetStream, at most once per `metrics_queue_ttl`."""
        if self.queues_at and time.monotonic() - self.queues_at < self.queue_ttl:
            return
        async with self._queue_lock:
            if self.queues_at and time.monotonic() - self.queues_at < self.queue_ttl:
                return
            try:
                async with asyncio.timeout(QUEUE_TIMEOUT):
                    self.queues = await queue_states(self.runtime.js)
                self.queues_at = time.monotonic()
            except Exception as exc:
                log.warning("queue figures unavailable: %s", exc)

    async def render(self) -> bytes:
        await self.refresh_queues()
        return generate_latest(self.registry)
