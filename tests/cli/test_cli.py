"""`llmq api` and `llmq worker` flags: one per setting, typed from the settings model."""

from __future__ import annotations

import pytest

from llmq.cli import API_FLAGS, CONNECTION_FLAGS, WORKER_FLAGS, build_parser, settings_from
from llmq.schemas.settings import Settings


def _api(*argv: str) -> Settings:
    args = build_parser().parse_args(["api", *argv])
    return settings_from(args, CONNECTION_FLAGS + API_FLAGS)


def test_api_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_BATCH_STALL", "9")  # a flag left out keeps the environment's value
    settings = _api(
        "--batch-lease", "7.5",
        "--batch-max-inflight", "64",
        "--trusted-tenants", "acme,globex",
        "--aliases", "fast=ollama:qwen2.5,smart=openai:gpt-4.1-mini",
        "--quota-fail-open",
        "--no-request-log",
        "--job-retention", "3600",
    )  # fmt: skip
    assert settings.batch_lease == 7.5 and settings.batch_max_inflight == 64
    assert settings.trusted_tenants == ["acme", "globex"]
    assert settings.aliases == ["fast=ollama:qwen2.5", "smart=openai:gpt-4.1-mini"]
    assert settings.quota_fail_open is True and settings.request_log is False
    assert settings.job_retention == 3600.0 and settings.batch_stall == 9.0


def test_bad_flag_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        _api("--batch-lease", "soon")


def test_every_flag_is_a_documented_setting() -> None:
    for name in CONNECTION_FLAGS + API_FLAGS + WORKER_FLAGS:
        assert Settings.model_fields[name].description, name
    for secret in ("admin_token", "webhook_secret"):
        assert secret not in API_FLAGS, secret  # from the environment only (never in `ps`)
