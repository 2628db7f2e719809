"""Settings → BackendConfig (worker/config.py): keys from env or file, headers, Azure, Ollama
and Anthropic options, timeouts, and no secret in any repr or log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmq.cli import build_parser, settings_from
from llmq.schemas.settings import Settings
from llmq.worker.backends.base import (
    AnthropicOptions,
    EchoOptions,
    OllamaOptions,
    OpenAIOptions,
    Timeouts,
)
from llmq.worker.config import ConfigError, backend_config_from, describe, parse_headers, redact_url

SECRET = "sk-secret-0123456789"


def _settings(**values: Any) -> Settings:
    return Settings(**values)


def test_echo_needs_nothing() -> None:
    config = backend_config_from(_settings(echo_delay=0.5), environ={"OPENAI_API_KEY": SECRET})
    assert (
        config.kind == "echo" and config.options == EchoOptions(delay=0.5) and config.api_key == ""
    )


@pytest.mark.parametrize(
    ("backend", "extra", "variable"),
    [
        ("openai", {}, "OPENAI_API_KEY"),
        ("openai", {"azure_api_version": "2024-10-21"}, "AZURE_OPENAI_API_KEY"),
        ("anthropic", {}, "ANTHROPIC_API_KEY"),
        ("ollama", {}, "OLLAMA_API_KEY"),
    ],
)
def test_default_key_variable_per_backend(
    backend: str, extra: dict[str, str], variable: str
) -> None:
    settings = _settings(backend=backend, backend_url="https://example.test", **extra)
    assert backend_config_from(settings, environ={variable: f" {SECRET}\n"}).api_key == SECRET
    assert backend_config_from(settings, environ={}).api_key == ""  # keyless local server


def test_azure_falls_back_to_openai_key() -> None:
    settings = _settings(
        backend="openai", backend_url="https://r.openai.azure.com", azure_deployment="gpt4o"
    )
    config = backend_config_from(settings, environ={"OPENAI_API_KEY": SECRET})
    assert config.api_key == SECRET
    assert config.options == OpenAIOptions(azure_deployment="gpt4o")


def test_named_key_variable_must_be_set() -> None:
    settings = _settings(backend="openai", api_key_env="MY_KEY")
    assert backend_config_from(settings, environ={"MY_KEY": SECRET}).api_key == SECRET
    with pytest.raises(ConfigError, match="MY_KEY"):
        backend_config_from(settings, environ={"OPENAI_API_KEY": SECRET})


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(SECRET + "\n")
    settings = _settings(backend="anthropic", api_key_file=str(path))
    assert backend_config_from(settings, environ={}).api_key == SECRET
    with pytest.raises(ConfigError, match="cannot read"):
        backend_config_from(_settings(backend="openai", api_key_file=str(tmp_path / "none")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        backend_config_from(_settings(backend="openai", api_key_file=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="not both"):
        backend_config_from(
            _settings(backend="openai", api_key_file=str(path), api_key_env="X"), environ={}
        )


def test_headers_parsed_and_validated() -> None:
    assert parse_headers(["X-Org: acme", "X-Title:  llmq ", "x-org: other"]) == {
        "X-Org": "acme",
        "X-Title": "llmq",
        "x-org": "other",
    }
    with pytest.raises(ConfigError) as bad:
        parse_headers([f"no colon {SECRET}"])
    assert SECRET not in str(bad.value)
    with pytest.raises(ConfigError):
        parse_headers(["Bad Name: x"])
    with pytest.raises(ConfigError):
        parse_headers(["Content-Length: 5"])


def test_headers_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_BACKEND_HEADER", "X-A: 1, 2\nX-B: b, X-C: c")
    assert Settings().backend.backend_header == ["X-A: 1, 2", "X-B: b", "X-C: c"]


def test_options_and_timeouts() -> None:
    config = backend_config_from(
        _settings(
            backend="ollama",
            backend_url="http://gpu1:11434",
            ollama_keep_alive="-1",
            ollama_num_ctx=8192,
            backend_connect_timeout=1,
            backend_first_token_timeout=2,
            backend_token_timeout=3,
            backend_timeout=4,
        ),
        environ={},
    )
    assert config.options == OllamaOptions(keep_alive="-1", num_ctx=8192)
    assert config.timeouts == Timeouts(connect=1, first_token=2, between_tokens=3, total=4)
    config = backend_config_from(
        _settings(backend="openai", stream_usage=False, azure_deployment=""), environ={}
    )
    assert config.options == OpenAIOptions(include_usage=False)
    config = backend_config_from(_settings(backend="anthropic", anthropic_max_tokens=99), {})
    assert config.options == AnthropicOptions(default_max_tokens=99)
    config = backend_config_from(_settings(backend="ollama", backend_http_client="httpx"), {})
    assert config.http_client == "httpx" and config.options == OllamaOptions()


def test_bad_settings_are_clear() -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        backend_config_from(_settings(backend="vllm"))
    with pytest.raises(ConfigError, match="http"):
        backend_config_from(_settings(backend="openai", backend_url="localhost:8000"))
    with pytest.raises(ConfigError, match="Azure"):
        backend_config_from(_settings(backend="openai", azure_deployment="d"), environ={})


def test_no_secret_in_reprs_or_description() -> None:
    settings = _settings(
        backend="openai",
        backend_url="https://user:pw@api.example.test/v1?sig=abc",
        api_key_env="K",
        backend_header=[f"Authorization-Extra: {SECRET}"],
    )
    config = backend_config_from(settings, environ={"K": SECRET})
    assert config.api_key == SECRET
    assert config.headers == {"Authorization-Extra": SECRET}
    for text in (repr(settings), repr(config), describe(config)):
        assert SECRET not in text
        assert "pw" not in text and "sig=" not in text
    assert describe(config) == (
        "openai (https://api.example.test/v1; with an API key; headers Authorization-Extra)"
    )
    assert redact_url("http://[::1]:8080/v1") == "http://[::1]:8080/v1"


def test_cli_flags_reach_the_settings() -> None:
    args = build_parser().parse_args(
        [
            "worker",
            "--backend", "openai",
            "--backend-url", "http://127.0.0.1:8000/v1",
            "--model", "ollama:qwen2.5=qwen2.5,other",
            "--api-key-env", "VLLM_KEY",
            "--backend-header", "X-A: 1, 2",
            "--backend-header", "X-B: 3",
            "--backend-first-token-timeout", "7.5",
            "--no-stream-usage",
        ]
    )  # fmt: skip
    settings = settings_from(args, "worker")
    assert settings.worker.model == ["ollama:qwen2.5=qwen2.5", "other"]
    assert settings.backend.backend_header == ["X-A: 1, 2", "X-B: 3"]
    config = backend_config_from(settings, environ={"VLLM_KEY": SECRET})
    assert config.headers == {"X-A": "1, 2", "X-B": "3"}
    assert config.timeouts.first_token == 7.5
    assert config.options == OpenAIOptions(include_usage=False)
    assert config.api_key == SECRET
