"""Settings nested per concern: every environment name of the flat model still reaches its
field, flat keywords still build `Settings`, and flags come from the models."""

from __future__ import annotations

from typing import Any

import pytest

from llmq.cli import Command, build_parser, flags_for
from llmq.schemas.settings import Settings, leaves

# Every setting's environment variable before the split (name -> a value to set and the
# value it must parse to); operators' deployments, compose/ and the docs use these.
ENV: dict[str, tuple[str, Any]] = {
    "NATS_URL": ("nats://n:4222", "nats://n:4222"),
    "NATS_CONNECT_TIMEOUT": ("7", 7.0),
    "STARTUP_TIMEOUT": ("90", 90.0),
    "REDIS_URL": ("redis://r:6379/1", "redis://r:6379/1"),
    "REDIS_TIMEOUT": ("2.5", 2.5),
    # connection credentials and TLS (issue 12): environment only
    "NATS_CREDS": ("/s/llmq.creds", "/s/llmq.creds"),
    "NATS_NKEY": ("/s/llmq.nk", "/s/llmq.nk"),
    "NATS_USER": ("api", "api"),
    "NATS_PASSWORD": ("pw", "pw"),
    "NATS_PASSWORD_FILE": ("/s/pw", "/s/pw"),
    "NATS_TOKEN": ("tk", "tk"),
    "NATS_TOKEN_FILE": ("/s/tk", "/s/tk"),
    "NATS_TLS_CA": ("/s/ca.pem", "/s/ca.pem"),
    "NATS_TLS_CERT": ("/s/c.pem", "/s/c.pem"),
    "NATS_TLS_KEY": ("/s/c.key", "/s/c.key"),
    "NATS_INBOX_PREFIX": ("_INBOX_worker", "_INBOX_worker"),
    "NATS_PROVISION": ("false", False),
    "REDIS_PASSWORD": ("rpw", "rpw"),
    "REDIS_PASSWORD_FILE": ("/s/rpw", "/s/rpw"),
    "REDIS_TLS_CA": ("/s/rca.pem", "/s/rca.pem"),
    "REDIS_SENTINELS": ("s1:26379, s2:26379", ["s1:26379", "s2:26379"]),
    "REDIS_SENTINEL_MASTER": ("main", "main"),
    "REDIS_SENTINEL_DB": ("2", 2),
    "REDIS_SENTINEL_PASSWORD": ("spw", "spw"),
    "REDIS_SENTINEL_PASSWORD_FILE": ("/s/spw", "/s/spw"),
    "HOST": ("0.0.0.0", "0.0.0.0"),
    "PORT": ("9000", 9000),
    "INSTANCE_ID": ("api-1", "api-1"),
    "DEADLINE": ("33", 33.0),
    "MAX_DEADLINE": ("44", 44.0),
    "MAX_BODY_BYTES": ("123", 123),
    "NO_WORKER_GRACE": ("1.5", 1.5),
    "QUEUE_TOKENS_PER_SECOND": ("25", 25.0),
    "GC_FREEZE_THRESHOLD": ("10000", 10_000),
    "AUTH_MODE": ("header", "header"),
    "CORS_ORIGINS": ("https://a, https://b", ["https://a", "https://b"]),
    "ADMIN_TOKEN": ("adm", "adm"),
    "LOG_JSON": ("true", True),
    "LOG_LEVEL": ("DEBUG", "DEBUG"),
    "SHUTDOWN_GRACE": ("3", 3.0),
    "MAX_HEADER_BYTES": ("4096", 4096),
    "MAX_HEADER_COUNT": ("50", 50),
    "HEADER_TIMEOUT": ("4", 4.0),
    "BODY_TIMEOUT": ("6", 6.0),
    "MAX_CONNECTIONS": ("900", 900),
    "KEEP_ALIVE_TIMEOUT": ("7", 7.0),
    "DOCS": ("true", True),
    "LIST_CONCURRENCY": ("3", 3),
    "STREAM_BUFFER_BYTES": ("131072", 131072),
    "STREAM_DRAIN_TIMEOUT": ("5", 5.0),
    "MALLOC_TRIM_INTERVAL": ("0", 0.0),
    "JOBS_STREAM_MAX_BYTES": ("2097152", 2097152),
    "BATCH_STREAM_MAX_BYTES": ("3145728", 3145728),
    "USAGE_STREAM_MAX_BYTES": ("4194304", 4194304),
    "OUTCOMES_STREAM_MAX_BYTES": ("5242880", 5242880),
    "WEBHOOKS_STREAM_MAX_BYTES": ("6291456", 6291456),
    "ASYNC_JOBS_MAX_BYTES": ("7340032", 7340032),
    "RESULTS_MAX_BYTES": ("8388608", 8388608),
    "BATCHES_MAX_BYTES": ("9437184", 9437184),
    "FILE_META_MAX_BYTES": ("10485760", 10485760),
    "FILES_MAX_TOTAL_BYTES": ("11534336", 11534336),
    "RESPONSES_MAX_BYTES": ("12582912", 12582912),
    "CONVERSATIONS_MAX_BYTES": ("13631488", 13631488),
    "REGISTRY_MAX_BYTES": ("14680064", 14680064),
    "TENANT_LEDGER_MAXLEN": ("500", 500),
    "LEDGER_MAX_AGE": ("3600", 3600.0),
    "STORE_HIGH_WATER": ("0.8", 0.8),
    "STORE_EVICT_WATER": ("0.7", 0.7),
    "TENANT_HEADER": ("X-T", "X-T"),
    "TRUSTED_TENANTS": ("a,b", ["a", "b"]),
    "DEFAULT_TENANT": ("a", "a"),
    "KEY_CACHE_TTL": ("9", 9.0),
    "QUOTA_FAIL_OPEN": ("1", True),
    "QUOTA_STORE_WAIT": ("2.5", 2.5),
    "DEFAULT_MAX_TOKENS": ("77", 77),
    "MODELS_FILE": ("/etc/m.toml", "/etc/m.toml"),
    "ALIASES": ("x=y,z=w", ["x=y", "z=w"]),
    "LEDGER_MAXLEN": ("10", 10),
    "RESERVATION_LEASE": ("11", 11.0),
    "QUOTA_LEASES": ("false", False),
    "QUOTA_LEASE_WINDOW": ("0.25", 0.25),
    "QUOTA_SLOT_GRACE": ("3", 3.0),
    "PING_INTERVAL": ("0.5", 0.5),
    "ACK_WAIT": ("12", 12.0),
    "MAX_DELIVER": ("5", 5),
    "JOBS_MAX_AGE": ("13", 13.0),
    "HEARTBEAT": ("0.7", 0.7),
    "NATS_REPLICAS": ("3", 3),
    "BACKEND": ("openai", "openai"),
    "MODEL": ("a,b=c", ["a", "b=c"]),
    "CAPACITY": ("6", 6),
    "WORKER_ID": ("w-1", "w-1"),
    "ECHO_DELAY": ("0.2", 0.2),
    "DRAIN_TIMEOUT": ("14", 14.0),
    "METRICS_PORT": ("9100", 9100),
    "PULL_EXPIRES": ("2", 2.0),
    "BREAKER_THRESHOLD": ("8", 8),
    "BREAKER_PROBE_INTERVAL": ("4", 4.0),
    "BACKEND_URL": ("http://u:1/v1", "http://u:1/v1"),
    "API_KEY_ENV": ("MY_KEY", "MY_KEY"),
    "API_KEY_FILE": ("/k", "/k"),
    "BACKEND_HEADER": ("X-A: 1\nX-B: 2", ["X-A: 1", "X-B: 2"]),
    "AZURE_DEPLOYMENT": ("dep", "dep"),
    "AZURE_API_VERSION": ("2024-10-21", "2024-10-21"),
    "OLLAMA_KEEP_ALIVE": ("-1", "-1"),
    "OLLAMA_NUM_CTX": ("8192", 8192),
    "ANTHROPIC_MAX_TOKENS": ("99", 99),
    "STREAM_USAGE": ("false", False),
    "BACKEND_CONNECT_TIMEOUT": ("1", 1.0),
    "BACKEND_FIRST_TOKEN_TIMEOUT": ("2", 2.0),
    "BACKEND_TOKEN_TIMEOUT": ("3", 3.0),
    "BACKEND_TIMEOUT": ("4", 4.0),
    "BACKEND_HTTP_CLIENT": ("httpx", "httpx"),
    "REQUEST_LOG": ("false", False),
    "METRICS_TENANT_LABEL": ("true", True),
    "METRICS_MAX_TENANTS": ("3", 3),
    "METRICS_QUEUE_TTL": ("0", 0.0),
    "METRICS_HOST": ("127.0.0.1", "127.0.0.1"),
    "METRICS_TOKEN": ("mt", "mt"),
    "METRICS_TOKEN_FILE": ("/run/secrets/none", "/run/secrets/none"),
    "ADMIN_TOKEN_FILE": ("/run/secrets/admin", "/run/secrets/admin"),
    "JOB_DEADLINE": ("15", 15.0),
    "JOB_RETENTION": ("16", 16.0),
    "FILES_MAX_BYTES": ("17", 17),
    "BATCH_MAX_LINES": ("18", 18),
    "BATCH_MAX_WINDOW": ("19", 19.0),
    "BATCH_MAX_INFLIGHT": ("20", 20),
    "BATCH_LEASE": ("21", 21.0),
    "BATCH_STALL": ("22", 22.0),
    "WEBHOOK_SECRET": ("whs", "whs"),
    "WEBHOOK_ATTEMPTS": ("23", 23),
    "WEBHOOK_TIMEOUT": ("24", 24.0),
    "WEBHOOK_ALLOW": ("hooks.internal, 10.0.0.0/8", ["hooks.internal", "10.0.0.0/8"]),
    "FILE_EXPIRY_SWEEP": ("25", 25.0),
    "FILES_MIN_EXPIRY": ("26", 26.0),
    "CONSOLE_ENABLED": ("false", False),
    "CONSOLE_SESSION_HOURS": ("2", 2.0),
    "CONSOLE_SECRET": ("cs", "cs"),
    "RESPONSE_RETENTION": ("27", 27.0),
    "RESPONSES_PASSTHROUGH": ("true", True),
    "OPENAI_ENDPOINTS": ("/v1/moderations, /v1/rerank", ["/v1/moderations", "/v1/rerank"]),
    "MAX_OUTPUT_TOKENS": ("37", 37),
    "MAX_N": ("38", 38),
    "FAST_PATHS": ("false", False),
    "CACHE_MAX_TTL": ("39", 39.0),
    "CACHE_MAX_ENTRY_BYTES": ("40", 40),
    "CACHE_TENANT_MAX_BYTES": ("41", 41),
    "CACHE_TENANT_MAX_ENTRIES": ("42", 42),
    "CACHE_JOIN_BUFFER_BYTES": ("43", 43),
    "CACHE_KEY": ("ck", "ck"),
}

# Flags per command before flags were derived from the models.
FLAGS: dict[Command, set[str]] = {
    "dev": {"host", "port", "echo_delay", "capacity", "log_level", "log_json"},
    "api": {
        "nats_url", "redis_url", "host", "port", "deadline", "max_deadline", "no_worker_grace",
        "max_body_bytes", "auth_mode", "cors_origins", "instance_id", "log_json", "log_level",
        "shutdown_grace", "tenant_header", "trusted_tenants", "default_tenant",
        "max_header_bytes", "max_header_count", "header_timeout", "body_timeout",
        "max_connections", "keep_alive_timeout", "docs", "list_concurrency",
        "key_cache_ttl", "quota_fail_open", "default_max_tokens", "models_file", "aliases",
        "request_log", "metrics_tenant_label", "metrics_max_tenants", "job_deadline",
        "job_retention", "files_max_bytes", "batch_max_lines", "batch_max_inflight",
        "batch_lease", "batch_stall", "webhook_attempts", "webhook_timeout",
        "webhook_allow", "metrics_token_file", "admin_token_file",
        "console_enabled", "console_session_hours",
        "response_retention", "cache_max_ttl", "cache_max_entry_bytes", "cache_tenant_max_bytes",
        "cache_tenant_max_entries", "cache_join_buffer_bytes",
    },
    "worker": {
        "nats_url", "redis_url", "backend", "model", "capacity", "worker_id", "echo_delay",
        "drain_timeout", "metrics_port", "breaker_threshold", "log_json", "log_level",
        "backend_url", "api_key_env", "api_key_file", "backend_header", "azure_deployment",
        "azure_api_version", "ollama_keep_alive", "ollama_num_ctx", "anthropic_max_tokens",
        "stream_usage", "backend_connect_timeout", "backend_first_token_timeout",
        "backend_token_timeout", "backend_timeout", "backend_http_client",
        "breaker_probe_interval", "metrics_token_file", "responses_passthrough", "openai_endpoints",
    },
}  # fmt: skip


def _at(settings: Settings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for name in path:
        value = getattr(value, name)
    return value


def test_every_old_environment_name_reaches_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    by_env = {leaf.env: leaf for leaf in leaves(Settings)}
    assert set(by_env) == {f"LLMQ_{name}" for name in ENV}  # none lost, none added
    for name, (raw, _) in ENV.items():
        monkeypatch.setenv(f"LLMQ_{name}", raw)
    settings = Settings()
    for name, (_, expected) in ENV.items():
        assert _at(settings, by_env[f"LLMQ_{name}"].path) == expected, name


def test_flat_keywords_and_groups_build_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_DEADLINE", "50")
    monkeypatch.setenv("LLMQ_OLLAMA_KEEP_ALIVE", "5m")
    settings = Settings(port=9001, ollama_num_ctx=4096, echo_delay=0.1, backend="ollama")
    assert settings.api.port == 9001 and settings.api.deadline == 50.0  # the rest: environment
    assert settings.backend.ollama.num_ctx == 4096 and settings.backend.ollama.keep_alive == "5m"
    assert settings.backend.echo.delay == 0.1 and settings.worker.backend == "ollama"
    nested = Settings(api={"deadline": 7}, max_deadline=8)
    assert nested.api.deadline == 7.0 and nested.api.max_deadline == 8.0
    assert Settings(model="a, b").worker.model == ["a", "b"]
    with pytest.raises(ValueError):
        Settings(capacity=0)


def test_flags_are_the_same_per_command() -> None:
    for command, expected in FLAGS.items():
        assert {leaf.flat for leaf in flags_for(command)} == expected, command
    parser = build_parser()
    args = parser.parse_args(["worker", "--ollama-num-ctx", "2048", "--echo-delay", "0.3"])
    assert args.ollama_num_ctx == 2048 and args.echo_delay == 0.3


def test_secrets_have_no_flag() -> None:
    secret = {leaf.flat for leaf in leaves(Settings) if leaf.secret}
    assert secret == {
        "admin_token", "webhook_secret", "metrics_token", "console_secret", "nats_password",
        "nats_token", "redis_password", "redis_sentinel_password", "cache_key",
    }  # fmt: skip
    assert all(not leaf.commands for leaf in leaves(Settings) if leaf.secret)


def test_a_variable_named_like_a_group_is_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_OLLAMA", "not json")
    monkeypatch.setenv("LLMQ_ECHO", "1")
    monkeypatch.setenv("LLMQ_ECHO_DELAY", "0.3")
    settings = Settings()
    assert settings.backend.ollama.num_ctx == 0 and settings.backend.echo.delay == 0.3


def test_ack_wait_follows_the_keepalive() -> None:
    """A killed worker's jobs move within the heartbeat's length by default; an ack wait
    shorter than two ping intervals would hand running jobs to a second worker."""
    protocol = Settings().protocol
    assert protocol.ack_wait == protocol.heartbeat == 2.0
    assert protocol.ack_wait >= 2 * protocol.ping_interval
    with pytest.raises(ValueError, match="ack_wait"):
        Settings(ack_wait=1.5, ping_interval=1.0)
