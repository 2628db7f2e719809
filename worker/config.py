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
from pathlib import Path
from urllib.parse import urlsplit

from llmq.schemas.settings import Settings
from llmq.worker.backends.base import BackendConfig, Timeouts, redact_url

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
    kind = settings.backend.strip().lower()
    if kind not in KINDS:
        raise ConfigError(
            f"unknown backend {settings.backend!r}; expected one of {', '.join(KINDS)}"
        )
    url = settings.backend_url.strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--backend-url must be an http(s) URL, got {redact_url(url)!r}")
    azure = kind == "openai" and bool(settings.azure_deployment or settings.azure_api_version)
    if azure and not url:
        raise ConfigError("Azure OpenAI needs --backend-url https://<resource>.openai.azure.com")
    options: dict[str, str] = {}
    if kind == "openai":
        if settings.azure_deployment:
            options["azure_deployment"] = settings.azure_deployment
        if settings.azure_api_version:
            options["api_version"] = settings.azure_api_version
        if not settings.stream_usage:
            options["include_usage"] = "false"
    elif kind == "ollama":
        if settings.ollama_keep_alive:
            options["keep_alive"] = settings.ollama_keep_alive
        if settings.ollama_num_ctx:
            options["num_ctx"] = str(settings.ollama_num_ctx)
    elif kind == "anthropic":
        options["default_max_tokens"] = str(settings.anthropic_max_tokens)
    if kind != "echo" and settings.backend_http_client != "auto":
        options["http_client"] = settings.backend_http_client
    return BackendConfig(
        kind=kind,
        url=url,
        api_key=_api_key(settings, kind, azure, env),
        headers=parse_headers(settings.backend_header),
        timeouts=Timeouts(
            connect=settings.backend_connect_timeout,
            first_token=settings.backend_first_token_timeout,
            between_tokens=settings.backend_token_timeout,
            total=settings.backend_timeout,
        ),
        echo_delay=settings.echo_delay,
        options=options,
    )


def _api_key(settings: Settings, kind: str, azure: bool, env: Mapping[str, str]) -> str:
    if kind == "echo":
        return ""
    if settings.api_key_file:
        if settings.api_key_env:
            raise ConfigError("give the API key by --api-key-env or --api-key-file, not both")
        path = Path(settings.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {str(path)!r}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"--api-key-file {str(path)!r} is empty")
        _check_key(key, f"--api-key-file {str(path)!r}")
        return key
    if settings.api_key_env:
        name = settings.api_key_env
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
    if config.options:
        bits.append(", ".join(f"{k}={v}" for k, v in sorted(config.options.items())))
    return " ".join(bits[:1]) + (f" ({'; '.join(bits[1:])})" if len(bits) > 1 else "")
