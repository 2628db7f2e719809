"""Backends: one module each. `create_backend` picks one by name."""

from __future__ import annotations

from llmq.worker.backends.base import Backend, BackendConfig


def create_backend(config: BackendConfig) -> Backend:
    """Build the backend named by `config.kind`; imports only the one asked for."""
    kind = config.kind
    if kind == "echo":
        from llmq.worker.backends.echo import EchoBackend

        return EchoBackend(config)
    if kind == "openai":
        from llmq.worker.backends.openai import OpenAIBackend  # type: ignore[import-not-found,unused-ignore]

        return OpenAIBackend(config)  # type: ignore[no-any-return,unused-ignore]
    if kind == "ollama":
        from llmq.worker.backends.ollama import OllamaBackend  # type: ignore[import-not-found,unused-ignore]

        return OllamaBackend(config)  # type: ignore[no-any-return,unused-ignore]
    if kind == "anthropic":
        from llmq.worker.backends.anthropic import AnthropicBackend  # type: ignore[import-not-found,unused-ignore]

        return AnthropicBackend(config)  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(f"unknown backend {kind!r}; expected echo, openai, ollama or anthropic")
