"""Settings of the worker process: what it serves and how, and how it reaches its backend
(common connection options, then one group per backend kind)."""

from __future__ import annotations

import os
import socket
from typing import Annotated, ClassVar, Literal

from pydantic import field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from llmq.schemas.settings.base import (
    ENV_PREFIX,
    Command,
    Group,
    setting,
    split_commas,
    split_headers,
)
from llmq.schemas.settings.service import short_id


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{short_id()[:4]}"


class WorkerSettings(Group):
    """The worker process: which backend kind and models, capacity, shutdown, breaker."""

    commands: ClassVar[tuple[Command, ...]] = ("worker",)

    backend: str = setting("echo", "Backend kind: echo, openai, ollama, anthropic.")
    model: Annotated[list[str], NoDecode] = setting(
        default_factory=lambda: ["echo"],
        description="Public model names served, comma-separated; `public=upstream` maps one.",
        repeat=True,
    )
    capacity: int = setting(
        4, "Most jobs this worker runs at once.", ge=1, commands=("worker", "dev")
    )
    worker_id: str = setting(
        default_factory=_worker_id, description="This worker's id in the registry."
    )
    drain_timeout: float = setting(
        30.0, "Seconds a worker lets in-flight jobs finish after SIGTERM."
    )
    metrics_port: int = setting(0, "Worker /metrics port; 0 = off.")
    pull_expires: float = setting(
        5.0, "Seconds a worker's pull request lingers before it is renewed.", commands=()
    )
    breaker_threshold: int = setting(5, "Consecutive backend failures that open the circuit.", ge=1)
    breaker_probe_interval: float = setting(
        2.0, "Seconds between backend probes while the circuit is open."
    )

    _split = field_validator("model", mode="before")(split_commas)


class OpenAISettings(Group):
    """openai backend (and Azure OpenAI)."""

    commands: ClassVar[tuple[Command, ...]] = ("worker",)

    azure_deployment: str = setting(
        "", "openai on Azure: deployment name (default: the upstream model name)."
    )
    azure_api_version: str = setting(
        "", "openai on Azure: api-version; setting it or a deployment means Azure."
    )
    stream_usage: bool = setting(
        True,
        "openai: ask the upstream for usage (stream_options); off for servers "
        "that reject it (usage is then counted).",
    )
    responses_passthrough: bool = setting(
        False,
        "openai: the upstream serves /v1/responses itself; Responses API jobs are passed "
        "through to it instead of being translated to chat.",
    )
    openai_endpoints: Annotated[list[str], NoDecode] = setting(
        default_factory=list,
        description="openai: OpenAI's other endpoints the upstream serves for the worker's "
        "models, comma-separated (/v1/moderations, /v1/images/generations, /v1/images/edits, "
        "/v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/rerank).",
    )

    _split = field_validator("openai_endpoints", mode="before")(split_commas)


class OllamaSettings(Group):
    """ollama backend (`LLMQ_OLLAMA_*`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "OLLAMA_", extra="ignore")
    commands: ClassVar[tuple[Command, ...]] = ("worker",)

    keep_alive: str = setting("", "ollama: keep_alive (`5m`, `1h`, `-1` = forever, `0` = unload).")
    num_ctx: int = setting(0, "ollama: context length; 0 = model default.", ge=0)


class AnthropicSettings(Group):
    """anthropic backend (`LLMQ_ANTHROPIC_*`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "ANTHROPIC_", extra="ignore")
    commands: ClassVar[tuple[Command, ...]] = ("worker",)

    max_tokens: int = setting(4096, "anthropic: max_tokens sent when the request sets none.", ge=1)


class EchoSettings(Group):
    """The built-in echo backend (`LLMQ_ECHO_*`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "ECHO_", extra="ignore")
    commands: ClassVar[tuple[Command, ...]] = ("worker", "dev")

    delay: float = setting(0.0, "echo backend: seconds per token.", ge=0)


class BackendSettings(Group):
    """How the worker reaches its backend: URL, key, headers, timeouts; then per kind."""

    commands: ClassVar[tuple[Command, ...]] = ("worker",)

    backend_url: str = setting(
        "",
        "Backend base URL. openai: up to /v1 (default https://api.openai.com/v1; "
        "Azure: https://NAME.openai.azure.com); ollama: http://host:11434; anthropic: "
        "https://api.anthropic.com.",
        repr=False,
    )
    api_key_env: str = setting(
        "",
        "Environment variable holding the backend API key (default by backend: "
        "OPENAI_API_KEY, AZURE_OPENAI_API_KEY, ANTHROPIC_API_KEY, OLLAMA_API_KEY).",
    )
    api_key_file: str = setting(
        "", "File holding the backend API key (instead of an environment variable)."
    )
    backend_header: Annotated[list[str], NoDecode] = setting(
        default_factory=list,
        description="Extra header `Name: value` sent to the backend; repeat the flag, or put "
        "several in LLMQ_BACKEND_HEADER separated by newlines or commas.",
        repr=False,
        repeat=True,
    )
    backend_connect_timeout: float = setting(
        5.0, "Seconds to open a connection to the backend.", gt=0
    )
    backend_first_token_timeout: float = setting(
        60.0,
        "Seconds the backend may take to send its first token (a streamed upstream call; "
        "a non-streamed one is bounded by backend_timeout).",
        gt=0,
    )
    backend_token_timeout: float = setting(
        30.0, "Seconds the backend may pause between two tokens.", gt=0
    )
    backend_timeout: float = setting(600.0, "Seconds one backend call may take in all.", gt=0)
    backend_http_client: Literal["auto", "httpx"] = setting(
        "auto",
        "`auto`: llmq's lean HTTP/1.1 client for every http and https upstream (httpx "
        "only for what it lacks: credentials in the URL, a non-http proxy); `httpx`: "
        "httpx always.",
    )
    openai: OpenAISettings = setting(default_factory=OpenAISettings, description="openai")
    ollama: OllamaSettings = setting(default_factory=OllamaSettings, description="ollama")
    anthropic: AnthropicSettings = setting(
        default_factory=AnthropicSettings, description="anthropic"
    )
    echo: EchoSettings = setting(default_factory=EchoSettings, description="echo")

    _split = field_validator("backend_header", mode="before")(split_headers)
