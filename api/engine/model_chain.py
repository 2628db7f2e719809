"""Which model serves a request: the requested one, else its fallbacks in order.

The model table (`[models."<name>"] fallbacks`, `max_queue_wait`) says where a request may
go; this module says why it moves on. A request moves to the next model only before its
first token: the model has no live worker or only workers whose circuit is open, its queue
would make it wait longer than `max_queue_wait`, or its job failed before a first token
with a 429 or a 5xx (attempts exhausted included). A passed deadline is never a reason: no
time is left for another model. docs/routing.md describes what a client sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import msgspec

from llmq.api.model_table import ModelTable
from llmq.dispatcher.registry import WorkerRegistry
from llmq.schemas.admission import AnyRequest, Refusal
from llmq.schemas.frames import Failed
from llmq.schemas.openai import patch_body

NO_WORKER: Final = "no_worker"
CIRCUIT_OPEN: Final = "circuit_open"
QUEUE_WAIT: Final = "queue_wait"
RATE_LIMITED: Final = "rate_limited"
UPSTREAM_ERROR: Final = "upstream_error"
ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
CAUSES: Final = (
    NO_WORKER,
    CIRCUIT_OPEN,
    QUEUE_WAIT,
    RATE_LIMITED,
    UPSTREAM_ERROR,
    ATTEMPTS_EXHAUSTED,
)

_NOT_A_CAUSE: Final = frozenset({"deadline_exceeded", "request_too_large"})
"""Failures another model would not cure: the deadline is gone, the body is too big."""

MODEL_HEADER: Final = "x-llmq-model"
"""Names the model that served the request (the requested one or a fallback)."""
UNSERVED_CHECK: Final = 0.25
"""Seconds between looks at whether a queued job's model still has a worker taking jobs."""

Estimate = Callable[[str], float | None]


def _unknown(_model: str) -> float | None:
    return None


class Router:
    def __init__(
        self, models: ModelTable, registry: WorkerRegistry, estimate: Estimate = _unknown
    ) -> None:
        self.models = models
        self.registry = registry
        self.estimate = estimate
        """The model's estimated queue wait in seconds, None while unknown."""

    def chain(self, model: str) -> list[str]:
        """The requested model, then its fallbacks (re-read from the live table each time)."""
        return [model, *self.models.fallbacks_for(model)]

    def unavailable_cause(self, model: str) -> str:
        """Why a model with no worker taking jobs cannot: every live one has its circuit
        open, or there is none."""
        live = [w for w in self.registry.live_workers() if model in w.models and not w.draining]
        return CIRCUIT_OPEN if live and all(w.circuit == "open" for w in live) else NO_WORKER

    def over_queue_wait(self, model: str) -> bool:
        """The model's estimated wait is above its `max_queue_wait`."""
        limit = self.models.max_queue_wait_for(model)
        if limit is None:
            return False
        wait = self.estimate(model)
        return wait is not None and wait > limit

    def admit(self, model: str, time_left: float) -> Refusal | None:
        """Queue-aware admission: a 429 `queue_full` now when the model's estimated wait
        would outlast the request's first-token deadline, instead of queueing a request
        that would time out. `Retry-After`: when the estimate says the queue is short
        enough again."""
        wait = self.estimate(model)
        if wait is None or wait <= time_left:
            return None
        retry = max(1, math.ceil(wait - max(time_left, 0.0)))
        return Refusal(
            429,
            f"The queue for model `{model}` would not start this request before its deadline "
            f"(estimated wait {wait:.1f}s, deadline in {max(time_left, 0.0):.1f}s). "
            "Retry after the indicated time.",
            "queue_full",
            type="rate_limit_exceeded",
            headers={"retry-after": str(retry)},
            retry_after=float(retry),
        )


def failure_cause(frame: Failed) -> str | None:
    """The fallback cause of a job that failed before its first token, None when another
    model would not help (a 4xx of the request's own, a passed deadline)."""
    code = frame.error.code or ""
    if code in _NOT_A_CAUSE:
        return None
    if code in (ATTEMPTS_EXHAUSTED, NO_WORKER, CIRCUIT_OPEN):
        return code
    if frame.status == 429:
        return RATE_LIMITED
    if frame.status >= 500:
        return UPSTREAM_ERROR
    return None


def for_model(req: AnyRequest, body: bytes, model: str) -> tuple[AnyRequest, bytes]:
    """The request as sent to `model`: the requested model itself, or a fallback."""
    return msgspec.structs.replace(req, model=model), patch_body(body, {"model": model})
