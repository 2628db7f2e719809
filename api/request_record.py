"""One request as observers (metrics, the request log, tracing) see it when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmq.api.tracing import RequestTrace


@dataclass
class RequestRecord:
    """One request as observers (metrics, the request log) see it when it ends."""

    job_id: str
    route: str
    tenant: str = ""
    model: str = ""
    stream: bool = False
    status: int = 200
    error_code: str | None = None
    worker: str | None = None
    started: float = field(default_factory=time.monotonic)
    latency: float = 0.0
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trace: RequestTrace | None = None
    """OpenTelemetry spans of this request; None when tracing is off (api/tracing.py)."""
    omitted: list[str] = field(default_factory=list)
    """Types of the built-in tools left out of a Responses request (`x-llmq-omitted`)."""
    cache: str = ""
    """The response cache's part (`hit`, `miss`, `join`, `skip`; '' when it had none)."""
    fallbacks: list[tuple[str, str, str]] = field(default_factory=list)
    """(from model, to model, cause) of each move to a fallback (api/engine/model_chain.py)."""
