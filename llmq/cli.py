"""The `llmq` command: `dev`, `api`, `worker` (and the operator commands registered below).

Every flag maps to a field of `schemas.settings.Settings`, so each can also be given as an
`LLMQ_<FIELD>` environment variable; a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llmq.schemas.settings import Settings

Handler = Callable[[argparse.Namespace], int]

CONNECTION_FLAGS = ["nats_url", "redis_url"]
# Secrets (LLMQ_ADMIN_TOKEN, LLMQ_WEBHOOK_SECRET, backend keys) have no flag: it would show
# in `ps`. They come from the environment or a file.
API_FLAGS = [
    "host", "port", "deadline", "max_deadline", "no_worker_grace", "max_body_bytes",
    "auth_mode", "cors_origins", "instance_id", "log_json", "log_level", "shutdown_grace",
    # tenants, quotas and the model table
    "tenant_header", "trusted_tenants", "default_tenant", "key_cache_ttl", "quota_fail_open",
    "default_max_tokens", "models_file", "aliases",
    # observability
    "request_log", "metrics_tenant_label", "metrics_max_tenants",
    # async jobs, files and batches
    "job_deadline", "job_retention", "files_max_bytes", "batch_max_lines", "batch_max_inflight",
    "batch_lease", "batch_stall", "webhook_attempts", "webhook_timeout",
]  # fmt: skip
WORKER_FLAGS = [
    "backend", "model", "capacity", "worker_id", "echo_delay", "drain_timeout", "metrics_port",
    "breaker_threshold", "log_json", "log_level",
    # worker: backend connection
    "backend_url", "api_key_env", "api_key_file", "backend_header", "azure_deployment",
    "azure_api_version", "ollama_keep_alive", "ollama_num_ctx", "anthropic_max_tokens",
    "stream_usage", "backend_connect_timeout", "backend_first_token_timeout",
    "backend_token_timeout", "backend_timeout", "backend_http_client", "breaker_probe_interval",
]  # fmt: skip


def add_settings_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """One `--field-name` flag per Settings field, typed and documented from the model."""
    for name in fields:
        info = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} (env LLMQ_{name.upper()})"
        annotation = info.annotation
        if annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name in ("model", "backend_header"):  # repeatable
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        else:
            kind: Any = annotation if annotation in (int, float) else str
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def settings_from(args: argparse.Namespace, fields: Sequence[str]) -> Settings:
    overrides = {
        name: getattr(args, name) for name in fields if getattr(args, name, None) is not None
    }
    if "model" in overrides:
        overrides["model"] = [
            part for spec in overrides["model"] for part in spec.split(",") if part
        ]
    return Settings(**overrides)


def setup_logging(settings: Settings) -> None:
    from llmq.api.logs import configure

    configure(settings.log_level, settings.log_json)


# --- commands --------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    settings = settings_from(args, CONNECTION_FLAGS + API_FLAGS)
    setup_logging(settings)
    from llmq.api.server import run_api

    run_api(settings)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args, CONNECTION_FLAGS + WORKER_FLAGS)
    setup_logging(settings)
    from llmq.worker.main import run_worker

    _run(run_worker(settings))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    settings = settings_from(
        args, ["host", "port", "echo_delay", "capacity", "log_level", "log_json"]
    )
    setup_logging(settings)
    from llmq.dev import run_dev

    return run_dev(settings, data_dir=args.data_dir)


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmq", description="OpenAI-compatible LLM gateway on NATS"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "dev", help="run nats-server, a Redis-compatible server, the api and an echo worker"
    )
    add_settings_flags(dev, ["host", "port", "echo_delay", "capacity", "log_level", "log_json"])
    dev.add_argument("--data-dir", default=None, help="keep server data here (default: a temp dir)")
    dev.set_defaults(handler=cmd_dev)

    api = sub.add_parser("api", help="run the HTTP api")
    add_settings_flags(api, CONNECTION_FLAGS + API_FLAGS)
    api.set_defaults(handler=cmd_api)

    worker = sub.add_parser("worker", help="run a worker in front of one backend")
    add_settings_flags(worker, CONNECTION_FLAGS + WORKER_FLAGS)
    worker.set_defaults(handler=cmd_worker)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Operator command groups living beside the code they drive."""
    from llmq import ops_cli, tenants_cli

    return [tenants_cli.register, ops_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
