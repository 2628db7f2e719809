"""`llmq provision [--watch]`: create llmq's NATS streams, buckets and shared consumers with
a user allowed to (dispatcher/provision.py; docs/security.md, "Provisioning")."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_provision(args: argparse.Namespace) -> int:
    from llmq import event_loop
    from llmq.api.logs import configure
    from llmq.dispatcher.connection import NatsRefused
    from llmq.dispatcher.provision import run_provision
    from llmq.schemas.settings import Settings

    settings = Settings()
    configure(settings.observability.log_level, settings.observability.log_json)
    try:
        event_loop.run(run_provision(settings, watch=args.watch))
    except NatsRefused as exc:
        print(f"llmq provision: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "provision",
        help="create the NATS streams, buckets and shared consumers (a provisioning user)",
        description="Create or update every NATS stream, KV bucket, object store and shared "
        "consumer llmq needs, as LLMQ_NATS_REPLICAS and the retention settings say. Run it "
        "with a NATS user allowed to, before api and workers that run with "
        "LLMQ_NATS_PROVISION=false. Reads the LLMQ_NATS_* settings from the environment.",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="stay connected and provision again after each reconnect (until SIGTERM)",
    )
    parser.set_defaults(handler=cmd_provision)
