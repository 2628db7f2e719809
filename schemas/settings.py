"""All configuration, in one place. Every field can be set as `LLMQ_<FIELD>` in the
environment or, for the processes that take it, as a `--field-name` command-line flag.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _short_id() -> str:
    return uuid.uuid4().hex[:10]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore")

    # --- connections -------------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma-separated.")
    nats_connect_timeout: float = Field(5.0, description="Seconds to wait for NATS at start.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis or Valkey URL.")
    redis_timeout: float = Field(1.0, description="Seconds before a Redis command counts as down.")

    # --- api ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the api listens on.")
    port: int = Field(8000, description="Port the api listens on.")
    instance_id: str = Field(
        default_factory=_short_id, description="This api process's id; names its reply inbox."
    )
    deadline: float = Field(
        120.0, description="Default seconds a job may take, queueing included, before a 504."
    )
    max_deadline: float = Field(600.0, description="Upper bound for a job's deadline (seconds).")
    max_body_bytes: int = Field(
        1_000_000, description="Largest accepted request body; larger bodies get a 413."
    )
    no_worker_grace: float = Field(
        0.0, description="Seconds to wait for a live worker of a known model before a 503."
    )
    auth_mode: Literal["none", "keys", "header"] = Field(
        "keys",
        description="`keys`: bearer API keys; `header`: trusted tenant header; `none`: no "
        "tenants and no quotas (development only).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated; empty: off."
    )
    admin_token: str = Field("", description="Bearer token for /admin; empty disables /admin.")
    log_json: bool = Field(False, description="Log one JSON object per line.")
    log_level: str = Field("INFO", description="Python log level.")
    shutdown_grace: float = Field(
        30.0, description="Seconds open streams may run after SIGTERM before they are cut."
    )

    # --- tenants and quotas ------------------------------------------------------------
    tenant_header: str = Field(
        "X-Tenant-ID", description="auth_mode=header: the header that names the tenant."
    )
    trusted_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="auth_mode=header: tenants the header may name, comma-separated.",
    )
    default_tenant: str = Field(
        "", description="auth_mode=header: tenant used when the header is absent; empty = 401."
    )
    key_cache_ttl: float = Field(
        5.0, description="Seconds a resolved API key is cached; a revoked key works this long."
    )
    quota_fail_open: bool = Field(
        False, description="Serve without quota checks while Redis is down (default: 503)."
    )
    default_max_tokens: int = Field(
        4096, description="Tokens reserved for a request that sets no max_tokens."
    )
    models_file: str = Field(
        "", description="TOML file with aliases and per-model defaults; re-read when it changes."
    )
    aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Model aliases `alias=model`, comma-separated."
    )
    ledger_maxlen: int = Field(100_000, description="Entries kept in the usage ledger stream.")
    reservation_lease: float = Field(
        900.0, description="Seconds after which an unreleased concurrency slot is reclaimed."
    )

    # --- the job protocol (api and worker must agree) -----------------------------------
    ping_interval: float = Field(
        1.0, description="Seconds between keep-alive frames of a running job; 3 missed = dead."
    )
    ack_wait: float = Field(
        10.0, description="Seconds a fetched, unanswered job waits before redelivery."
    )
    max_deliver: int = Field(3, description="Attempts per job before it fails for good.")
    jobs_max_age: float = Field(
        900.0, description="Seconds an interactive job may stay in LLMQ_JOBS at most."
    )
    heartbeat: float = Field(2.0, description="Seconds between worker registry heartbeats.")

    # --- worker ------------------------------------------------------------------------
    backend: str = Field("echo", description="Backend kind: echo, openai, ollama, anthropic.")
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["echo"],
        description="Public model names served, comma-separated; `public=upstream` maps one.",
    )
    capacity: int = Field(4, ge=1, description="Most jobs this worker runs at once.")
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{_short_id()[:4]}",
        description="This worker's id in the registry.",
    )
    echo_delay: float = Field(0.0, ge=0, description="echo backend: seconds per token.")
    drain_timeout: float = Field(
        30.0, description="Seconds a worker lets in-flight jobs finish after SIGTERM."
    )
    metrics_port: int = Field(0, description="Worker /metrics port; 0 = off.")
    pull_expires: float = Field(
        5.0, description="Seconds a worker's pull request lingers before it is renewed."
    )
    breaker_threshold: int = Field(
        5, ge=1, description="Consecutive backend failures that open the circuit."
    )
    breaker_probe_interval: float = Field(
        2.0, description="Seconds between backend probes while the circuit is open."
    )

    # --- worker: backend connection ----------------------------------------------------
    backend_url: str = Field(
        "",
        repr=False,
        description="Backend base URL. openai: up to /v1 (default https://api.openai.com/v1; "
        "Azure: https://NAME.openai.azure.com); ollama: http://host:11434; anthropic: "
        "https://api.anthropic.com.",
    )
    api_key_env: str = Field(
        "",
        description="Environment variable holding the backend API key (default by backend: "
        "OPENAI_API_KEY, AZURE_OPENAI_API_KEY, ANTHROPIC_API_KEY, OLLAMA_API_KEY).",
    )
    api_key_file: str = Field(
        "", description="File holding the backend API key (instead of an environment variable)."
    )
    backend_header: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Extra header `Name: value` sent to the backend; repeat the flag, or put "
        "several in LLMQ_BACKEND_HEADER separated by newlines or commas.",
    )
    azure_deployment: str = Field(
        "", description="openai on Azure: deployment name (default: the upstream model name)."
    )
    azure_api_version: str = Field(
        "", description="openai on Azure: api-version; setting it or a deployment means Azure."
    )
    ollama_keep_alive: str = Field(
        "", description="ollama: keep_alive (`5m`, `1h`, `-1` = forever, `0` = unload)."
    )
    ollama_num_ctx: int = Field(0, ge=0, description="ollama: context length; 0 = model default.")
    anthropic_max_tokens: int = Field(
        4096, ge=1, description="anthropic: max_tokens sent when the request sets none."
    )
    stream_usage: bool = Field(
        True,
        description="openai: ask the upstream for usage (stream_options); off for servers "
        "that reject it (usage is then counted).",
    )
    backend_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a connection to the backend."
    )
    backend_first_token_timeout: float = Field(
        60.0, gt=0, description="Seconds the backend may take to send its first token."
    )
    backend_token_timeout: float = Field(
        30.0, gt=0, description="Seconds the backend may pause between two tokens."
    )
    backend_timeout: float = Field(
        600.0, gt=0, description="Seconds one backend call may take in all."
    )
    backend_http_client: Literal["auto", "httpx"] = Field(
        "auto",
        description="`auto`: llmq's lean HTTP/1.1 client for plain-http upstreams without a "
        "proxy, httpx otherwise; `httpx`: httpx always.",
    )

    # --- observability -----------------------------------------------------------------
    request_log: bool = Field(
        True, description="api: log one line per request (logger `llmq.request`)."
    )
    metrics_tenant_label: bool = Field(
        False,
        description="api /metrics: label request, token and quota metrics with the tenant.",
    )
    metrics_max_tenants: int = Field(
        50,
        ge=0,
        description="api /metrics: tenants labelled by name (first seen); the rest are `other`.",
    )
    metrics_queue_ttl: float = Field(
        5.0, ge=0, description="api /metrics: seconds queue depths from JetStream are cached."
    )
    metrics_host: str = Field(
        "0.0.0.0", description="Address the worker's /metrics listens on (see metrics_port)."
    )

    # --- async jobs and batches ---------------------------------------------------------
    job_deadline: float = Field(
        86_400.0, gt=0, description="Seconds an async job (POST /v1/jobs) may queue and run."
    )
    job_retention: float = Field(
        7 * 86_400.0,
        gt=0,
        description="Seconds job and batch records and results are kept after their last change.",
    )
    files_max_bytes: int = Field(
        100_000_000, ge=1, description="Largest file accepted by POST /v1/files."
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Most requests in one batch file.")
    batch_max_window: float = Field(
        86_400.0, gt=0, description="Longest completion_window a batch may ask for (seconds)."
    )
    batch_max_inflight: int = Field(
        1_000, ge=1, description="Lines of one batch queued or running at once."
    )
    batch_lease: float = Field(
        15.0, gt=0, description="Seconds an api replica owns a batch without renewing it."
    )
    batch_stall: float = Field(
        30.0,
        gt=0,
        description="Seconds without progress after which a batch's missing results are "
        "looked for (and re-queued when JetStream has no trace of them).",
    )
    webhook_secret: str = Field(
        "", repr=False, description="HMAC-SHA256 key for webhook signatures; empty = unsigned."
    )
    webhook_attempts: int = Field(8, ge=1, description="Deliveries tried per webhook.")
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds one webhook POST may take.")

    @field_validator("backend_header", mode="before")
    @classmethod
    def _split_headers(cls, value: object) -> object:
        """Newlines, or commas followed by the next `Name:`, separate headers."""
        if isinstance(value, str):
            parts = re.split(r"\n|,(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*:)", value)
            return [part.strip() for part in parts if part.strip()]
        return value

    @field_validator("model", "cors_origins", "trusted_tenants", "aliases", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
