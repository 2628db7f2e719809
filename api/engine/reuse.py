"""Where an attempt may be answered without a job of its own: the seam the response cache
(`api/cache/`) plugs into, so every feature on the engine (chat, completions, embeddings,
the Responses API, …) gets it through one path. The engine imports no feature: the app
sets `Serving.reuse`; without it nothing is reused.

A feature's attempt, once it knows the model and the job body, hands its `Ask` to
`Serving.place`, which asks `Serving.reuse.plan`: `served()` may answer at once (a stored
answer, or a running identical job followed), before any queue place, quota slot or job;
otherwise, once its job is queued, `lead(run)` gives the run to read (others may follow
it) and `headers` go on the response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from llmq.api.request_record import RequestRecord
from llmq.dispatcher.dispatch import JobRun
from llmq.schemas.admission import Reservation
from llmq.schemas.envelope import JobKind

MakeJob = Callable[[Any, Reservation, Any], Any]
"""Builds the feature's `QueuedJob` (its own relay) over a run, a reservation and a
fair-share ticket (`QueuedJob.maker`). (Typed loosely: `engine.job` and `engine.serving`
import this module.)"""


@dataclass(slots=True, kw_only=True)
class Ask:
    """One attempt, as the reuse decides on it."""

    request: Request
    record: RequestRecord
    kind: JobKind
    """The job kind: chat, completion, embedding, response, message, …"""
    model: str
    """The model this attempt runs on."""
    body: bytes
    """The job body as it would be sent (the model's name in it, defaults applied)."""
    stream: bool
    estimate: int
    max_tokens: int
    user: str
    make_job: MakeJob
    more: bool = False
    """Another model of the fallback chain is left."""
    headers: dict[str, str] = field(default_factory=dict)
    """The response's headers (`x-request-id`, the model), as a job's would have."""


class Plan(Protocol):
    headers: dict[str, str]
    """Go on the response of the job this attempt queues."""

    async def served(self) -> Response | None: ...

    def lead(self, run: JobRun) -> JobRun: ...


class Reuse(Protocol):
    def plan(self, serving: Any, ask: Ask) -> Plan:
        """`serving`: the `engine.serving.Serving` the attempt runs on."""
        ...


class _Nothing:
    headers: dict[str, str] = {}

    async def served(self) -> Response | None:
        return None

    def lead(self, run: JobRun) -> JobRun:
        return run


NOTHING = _Nothing()


class NoReuse:
    """Every attempt runs a job of its own."""

    def plan(self, serving: Any, ask: Ask) -> Plan:
        return NOTHING
