"""`llmq api` and `llmq worker` flags: one per setting, typed from the settings model."""

from __future__ import annotations

import pytest

from llmq.cli import build_parser, flags_for, settings_from
from llmq.schemas.settings import Settings


def _api(*argv: str) -> Settings:
    args = build_parser().parse_args(["api", *argv])
    return settings_from(args, "api")


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
    assert settings.batch.batch_lease == 7.5 and settings.batch.batch_max_inflight == 64
    assert settings.tenancy.trusted_tenants == ["acme", "globex"]
    assert settings.tenancy.aliases == ["fast=ollama:qwen2.5", "smart=openai:gpt-4.1-mini"]
    assert settings.tenancy.quota_fail_open is True and settings.observability.request_log is False
    assert settings.batch.job_retention == 3600.0 and settings.batch.batch_stall == 9.0


def test_bad_flag_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        _api("--batch-lease", "soon")


def test_every_flag_is_a_documented_setting() -> None:
    for command in ("api", "worker", "dev"):
        for leaf in flags_for(command):
            assert leaf.info.description, leaf.flat
    api_flags = {leaf.flat for leaf in flags_for("api")}
    for secret in ("admin_token", "webhook_secret", "metrics_token"):
        assert secret not in api_flags, secret  # from the environment only (never in `ps`)
