"""What workers announce about themselves in the LLMQ_WORKERS and LLMQ_MODELS buckets."""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct

from llmq.schemas.envelope import DEFAULT_KIND


class WorkerInfo(Struct, omit_defaults=True):
    id: str
    backend: str
    models: list[str]
    capacity: int
    in_flight: int = 0
    circuit: str = "closed"
    """`closed` (healthy), `open` (backend failing, not fetching) or `half-open` (probing)."""
    draining: bool = False
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    version: str = ""
    metrics_url: str = ""
    job_seconds: dict[str, float] = msgspec.field(default_factory=dict)
    """model -> recent seconds per job (started to ended, a moving average); the api's queue
    estimate of a model whose service rate is not measured yet."""


class ModelInfo(Struct, omit_defaults=True):
    name: str
    backend: str = ""
    first_seen: float = 0.0
    kinds: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_KIND])
    """Job kinds (`schemas.envelope.JobKind`) the model's backend accepts; kept strings so a
    kind a newer worker announces does not make the entry unreadable."""
    endpoints: list[str] = msgspec.field(default_factory=list)
    """OpenAI's other endpoints (`schemas.endpoints.ENDPOINT_PATHS`) the model serves."""


worker_info_decoder: Final = msgspec.json.Decoder(WorkerInfo)
model_info_decoder: Final = msgspec.json.Decoder(ModelInfo)
registry_encoder: Final = msgspec.json.Encoder()
