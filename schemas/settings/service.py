"""Settings of the api process: HTTP serving, the job protocol both sides agree on, async
jobs and batches, observability (the connections: `connection`; tenants and quotas:
`tenancy`)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import field_validator, model_validator
from pydantic_settings import NoDecode

from llmq.schemas.settings.base import Command, Group, setting, split_commas


def read_secret_file(path: str, setting_name: str) -> str:
    """A token read at start from the file a `*_file` setting names; empty is an error
    (an unset secret would silently turn its door off or leave it open)."""
    token = Path(path).expanduser().read_text().strip()
    if not token:
        raise ValueError(f"{setting_name} {path} is empty")
    return token


def short_id() -> str:
    return uuid.uuid4().hex[:10]


class ApiSettings(Group):
    """The HTTP side of the api process."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    host: str = setting("127.0.0.1", "Address the api listens on.", commands=("api", "dev"))
    port: int = setting(8000, "Port the api listens on.", commands=("api", "dev"))
    instance_id: str = setting(
        default_factory=short_id, description="This api process's id; names its reply inbox."
    )
    deadline: float = setting(
        120.0,
        "Seconds a request may wait for its first token (queue and start) before a 504; "
        "a client may ask for its own with the `X-Llmq-Deadline` header.",
    )
    max_deadline: float = setting(
        600.0,
        "Seconds a request may take in all, a flowing stream included; also caps "
        "`X-Llmq-Deadline`.",
    )
    max_body_bytes: int = setting(
        1_000_000, "Largest accepted request body; larger bodies get a 413."
    )
    queue_tokens_per_second: float = setting(
        0.0,
        "Output tokens a second assumed for a model whose queue has no measured service rate "
        "and whose workers report no job time yet: a job is assumed to take its model's "
        "max_tokens (the model table's, else default_max_tokens) at this speed. 0: such a "
        "model's queue wait is unknown and every request may queue (docs/routing.md).",
        ge=0,
        commands=(),
    )
    no_worker_grace: float = setting(
        -1.0,
        "Seconds a request for a known model with no live worker (a rolling deploy between "
        "two workers) waits in its queue for one before a 503 `no_worker`; -1 = until its "
        "first-token deadline; 0 = a 503 at once. A model with fallbacks moves on at once.",
        ge=-1,
    )
    auth_mode: Literal["none", "keys", "header"] = setting(
        "keys",
        "`keys`: bearer API keys; `header`: trusted tenant header; `none`: no "
        "tenants and no quotas (development only).",
    )
    cors_origins: Annotated[list[str], NoDecode] = setting(
        default_factory=list, description="Origins allowed by CORS, comma-separated; empty: off."
    )
    admin_token: str = setting(
        "",
        "Bearer token for /admin and the console's admin login; empty disables both. Or "
        "give admin_token_file.",
        secret=True,
        repr=False,
    )
    admin_token_file: str = setting(
        "", "File holding admin_token (a mounted secret; read at start)."
    )
    shutdown_grace: float = setting(
        30.0, "Seconds open streams may run after SIGTERM before they are cut."
    )
    gc_freeze_threshold: int = setting(
        0,
        "After start-up, freeze the heap (gc.freeze) and collect the youngest generation "
        "every this many allocations (Python's default 700): fewer full collections, a "
        "shorter p99. 0: Python's collector as it is.",
        ge=0,
        commands=(),
    )

    _split = field_validator("cors_origins", mode="before")(split_commas)

    @model_validator(mode="after")
    def _token_from_file(self) -> ApiSettings:
        """The admin token from a file (a mounted secret) rather than the environment."""
        if self.admin_token_file and not self.admin_token:
            self.admin_token = read_secret_file(self.admin_token_file, "admin_token_file")
        return self


class ProtocolSettings(Group):
    """The job protocol: api and worker must agree on these, so neither has a flag."""

    ping_interval: float = setting(
        1.0, "Seconds between keep-alive frames of a running job; 3 missed = dead."
    )
    ack_wait: float = setting(
        2.0,
        "Seconds a fetched job may go without word from its worker before JetStream hands it "
        "to another: a worker marks each job it holds or runs in progress every half "
        "ping_interval, so only a dead or cut-off worker's jobs move, this quickly (the "
        "heartbeat's length by default). At least 2 x ping_interval.",
    )
    max_deliver: int = setting(3, "Attempts per job before it fails for good.")
    jobs_max_age: float = setting(
        900.0, "Seconds an interactive job may stay in LLMQ_JOBS at most."
    )
    heartbeat: float = setting(2.0, "Seconds between worker registry heartbeats.")
    nats_replicas: int = setting(
        1,
        "Copies of every stream, consumer, KV bucket and object store (1 on one NATS node, "
        "3 on a cluster); a changed value is applied in place at start.",
        ge=1,
        le=5,
    )

    @model_validator(mode="after")
    def _ack_wait_outlasts_keepalive(self) -> ProtocolSettings:
        """In-progress marks go out every half ping interval: an ack wait shorter than two
        intervals would hand running jobs to a second worker."""
        if self.ack_wait < 2 * self.ping_interval:
            raise ValueError(
                f"ack_wait ({self.ack_wait:g} s) must be at least 2 x ping_interval "
                f"({self.ping_interval:g} s)"
            )
        return self


class BatchSettings(Group):
    """Async jobs (POST /v1/jobs), files, batches and their webhooks."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    job_deadline: float = setting(
        86_400.0, "Seconds an async job (POST /v1/jobs) may queue and run.", gt=0
    )
    job_retention: float = setting(
        7 * 86_400.0,
        "Seconds job and batch records and results are kept after their last change.",
        gt=0,
    )
    response_retention: float = setting(
        30 * 86_400.0,
        "Seconds stored responses and conversations (Responses API) are kept after their "
        "last change; 0 = until deleted.",
        ge=0,
    )
    files_max_bytes: int = setting(100_000_000, "Largest file accepted by POST /v1/files.", ge=1)
    batch_max_lines: int = setting(50_000, "Most requests in one batch file.", ge=1)
    batch_max_window: float = setting(
        86_400.0, "Longest completion_window a batch may ask for (seconds).", gt=0, commands=()
    )
    batch_max_inflight: int = setting(1_000, "Lines of one batch queued or running at once.", ge=1)
    batch_lease: float = setting(
        15.0, "Seconds an api replica owns a batch without renewing it.", gt=0
    )
    batch_stall: float = setting(
        30.0,
        "Seconds without progress after which a batch's missing results are "
        "looked for (and re-queued when JetStream has no trace of them).",
        gt=0,
    )
    webhook_secret: str = setting(
        "", "HMAC-SHA256 key for webhook signatures; empty = unsigned.", secret=True, repr=False
    )
    webhook_attempts: int = setting(8, "Deliveries tried per webhook.", ge=1)
    webhook_timeout: float = setting(10.0, "Seconds one webhook POST may take.", gt=0)
    webhook_allow: Annotated[list[str], NoDecode] = setting(
        default_factory=list,
        description="Internal webhook receivers allowed despite the egress checks: host names "
        "or CIDRs, comma-separated; they may also use plain http.",
    )
    file_expiry_sweep: float = setting(
        60.0,
        "Seconds between sweeps that delete expired files and deleted tenants' data.",
        gt=0,
        commands=(),
    )
    files_min_expiry: float = setting(
        3600.0, "Shortest expires_after.seconds a file may ask for.", gt=0, commands=()
    )

    _split = field_validator("webhook_allow", mode="before")(split_commas)


class ObservabilitySettings(Group):
    """Logs and metrics of both processes."""

    commands: ClassVar[tuple[Command, ...]] = ("api",)

    log_json: bool = setting(
        False, "Log one JSON object per line.", commands=("api", "worker", "dev")
    )
    log_level: str = setting("INFO", "Python log level.", commands=("api", "worker", "dev"))
    request_log: bool = setting(True, "api: log one line per request (logger `llmq.request`).")
    metrics_tenant_label: bool = setting(
        False, "api /metrics: label request, token and quota metrics with the tenant."
    )
    metrics_max_tenants: int = setting(
        50, "api /metrics: tenants labelled by name (first seen); the rest are `other`.", ge=0
    )
    metrics_queue_ttl: float = setting(
        5.0, "api /metrics: seconds queue depths from JetStream are cached.", ge=0, commands=()
    )
    metrics_host: str = setting(
        "0.0.0.0", "Address the worker's /metrics listens on (see metrics_port).", commands=()
    )
    metrics_token: str = setting(
        "",
        "Bearer token that the api's and the worker's /metrics require; empty = open.",
        secret=True,
        repr=False,
    )
    metrics_token_file: str = setting(
        "", "File holding metrics_token (read at start).", commands=("api", "worker")
    )

    @model_validator(mode="after")
    def _token_from_file(self) -> ObservabilitySettings:
        """A secret from a file (a mounted secret) rather than the environment."""
        if self.metrics_token_file and not self.metrics_token:
            self.metrics_token = read_secret_file(self.metrics_token_file, "metrics_token_file")
        return self
