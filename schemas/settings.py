"""All configuration, in one place. Every field can be set as `LLMQ_<FIELD>` in the
environment or, for the processes that take it, as a `--field-name` command-line flag.
"""

from __future__ import annotations

import os
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

    @field_validator("model", "cors_origins", "trusted_tenants", "aliases", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
