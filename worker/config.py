"""From `Settings` to the `BackendConfig` a worker's backend is built with: one function.

The backend's API key comes from the worker's environment (`--api-key-env`, by default the
backend's usual variable) or a file (`--api-key-file`), never from a request. Secrets end up
only in `BackendConfig.api_key` and `BackendConfig.headers`, which are left out of its repr;
`describe` gives a loggable one-liner without them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

from llmq.schemas.settings import BackendSettings, Settings
from llmq.worker.backends.base import (
    AnthropicOptions,
    BackendConfig,
    BackendOptions,
    EchoOptions,
    OllamaOptions,
    OpenAIOptions,
    Timeouts,
    redact_url,
)

__all__ = ["ConfigError", "backend_config_from", "describe", "parse_headers", "redact_url"]

KINDS = ("echo", "openai", "ollama", "anthropic")

DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "ollama": "OLLAMA_API_KEY",
}
AZURE_KEY_ENV = "AZURE_OPENAI_API_KEY"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = frozenset(
    {"content-length", "content-type", "transfer-encoding", "host", "connection"}
)


class ConfigError(ValueError):
    """The worker's backend settings cannot work; the message says which one and why."""


def backend_config_from(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> BackendConfig:
    """The backend configuration described by `settings` (keys read from `environ`)."""
    env = os.environ if environ is None else environ
    kind = settings.worker.backend.strip().lower()
    if kind not in KINDS:
        raise ConfigError(
            f"unknown backend {settings.worker.backend!r}; expected one of {', '.join(KINDS)}"
        )
    url = settings.backend.backend_url.strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--backend-url must be an http(s) URL, got {redact_url(url)!r}")
    openai = settings.backend.openai
    azure = kind == "openai" and bool(openai.azure_deployment or openai.azure_api_version)
    if azure and not url:
        raise ConfigError("Azure OpenAI needs --backend-url https://<resource>.openai.azure.com")
    return BackendConfig(
        kind=kind,
        url=url,
        api_key=_api_key(settings.backend, kind, azure, env),
        headers=parse_headers(settings.backend.backend_header),
        timeouts=Timeouts(
            connect=settings.backend.backend_connect_timeout,
            first_token=settings.backend.backend_first_token_timeout,
            between_tokens=settings.backend.backend_token_timeout,
            total=settings.backend.backend_timeout,
        ),
        http_client="auto" if kind == "echo" else settings.backend.backend_http_client,
        options=_options(settings.backend, kind),
    )


def _options(backend: BackendSettings, kind: str) -> BackendOptions:
    """The typed options of `kind`, from its settings group."""
    if kind == "openai":
        return OpenAIOptions(
            azure_deployment=backend.openai.azure_deployment,
            api_version=backend.openai.azure_api_version,
            include_usage=backend.openai.stream_usage,
        )
    if kind == "ollama":
        return OllamaOptions(
            keep_alive=backend.ollama.keep_alive, num_ctx=backend.ollama.num_ctx or None
        )
    if kind == "anthropic":
        return AnthropicOptions(default_max_tokens=backend.anthropic.max_tokens)
    return EchoOptions(delay=backend.echo.delay)


def _api_key(backend: BackendSettings, kind: str, azure: bool, env: Mapping[str, str]) -> str:
    if kind == "echo":
        return ""
    if backend.api_key_file:
        if backend.api_key_env:
            raise ConfigError("give the API key by --api-key-env or --api-key-file, not both")
        path = Path(backend.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {str(path)!r}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"--api-key-file {str(path)!r} is empty")
        _check_key(key, f"--api-key-file {str(path)!r}")
        return key
    if backend.api_key_env:
        name = backend.api_key_env
        key = env.get(name, "").strip()
        if not key:
            # Named explicitly: a missing key is a mistake, not a keyless local server.
            raise ConfigError(f"--api-key-env names {name}, which is not set or empty")
        _check_key(key, f"${name}")
        return key
    name = AZURE_KEY_ENV if azure else DEFAULT_KEY_ENV[kind]
    key = env.get(name, "").strip()
    if azure and not key:
        key = env.get(DEFAULT_KEY_ENV["openai"], "").strip()
    if key:
        _check_key(key, f"${name}")
    return key  # no key: fine for local servers (vLLM, llama.cpp, Ollama)


def _check_key(key: str, where: str) -> None:
    if any(ch in key for ch in "\r\n\0") or not key.isprintable():
        raise ConfigError(f"the API key in {where} contains control characters")


def parse_headers(specs: list[str]) -> dict[str, str]:
    """`Name: value` lines as a dict; a later repeat of a name wins."""
    headers: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition(":")
        name, value = name.strip(), value.strip()
        if not sep:
            # Never echo the spec: it may be a bare credential.
            raise ConfigError("--backend-header must look like `Name: value` (no colon found)")
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"--backend-header: {name[:40]!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"--backend-header may not set {name}")
        if any(ch in value for ch in "\r\n\0"):
            raise ConfigError(f"--backend-header {name}: the value contains control characters")
        headers[name] = value
    return headers


def describe(config: BackendConfig) -> str:
    """One loggable line: kind, redacted URL, which options and header names; no secrets."""
    bits = [config.kind]
    if config.url:
        bits.append(redact_url(config.url))
    if config.kind != "echo":
        bits.append("with an API key" if config.api_key else "without an API key")
    if config.headers:
        bits.append("headers " + ", ".join(sorted(config.headers)))
    options = _changed(config)
    if options:
        bits.append(", ".join(f"{k}={v}" for k, v in sorted(options.items())))
    return " ".join(bits[:1]) + (f" ({'; '.join(bits[1:])})" if len(bits) > 1 else "")


def _changed(config: BackendConfig) -> dict[str, object]:
    """Options (the HTTP client included) that differ from their defaults."""
    changed: dict[str, object] = {}
    if config.http_client != "auto":
        changed["http_client"] = config.http_client
    if config.options is not None and config.kind != "echo":
        defaults = type(config.options)()
        for item in fields(config.options):
            value = getattr(config.options, item.name)
            if value != getattr(defaults, item.name):
                changed[item.name] = value
    return changed
