"""`llmq provision [--watch]`: every stream, KV bucket, object store and shared consumer llmq needs,
made by a NATS user allowed to, so that the api, the workers and the CLI run with users
that may not create, change or delete any of them (LLMQ_NATS_PROVISION=false,
docs/security.md). The workers' per-model consumers are theirs to make.

Idempotent, as every `streams` call is: run it before the api and workers at each deploy or
upgrade (a compose one-shot service, a Kubernetes init container). With `watch` it stays
connected and provisions again after each reconnect: a restarted single-node NATS has lost
its memory streams and buckets (LLMQ_JOBS, LLMQ_WORKERS)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from nats.js import JetStreamContext

from llmq import event_loop
from llmq.dispatcher import streams
from llmq.dispatcher.connection import NatsRefused, Provisioner, connect, disconnect
from llmq.dispatcher.tasks import retry
from llmq.schemas import names
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)

PROVISIONED = (
    names.JOBS_STREAM,
    names.BATCH_STREAM,
    names.USAGE_STREAM,
    names.OUTCOMES_STREAM,
    names.WEBHOOKS_STREAM,
    f"KV_{names.RESULTS_BUCKET}",
    f"KV_{names.ASYNC_JOBS_BUCKET}",
    f"KV_{names.BATCHES_BUCKET}",
    f"KV_{names.FILE_META_BUCKET}",
    f"OBJ_{names.FILES_OBJECT_STORE}",
    f"KV_{names.RESPONSES_BUCKET}",
    f"KV_{names.CONVERSATIONS_BUCKET}",
    f"KV_{names.WORKERS_BUCKET}",
    f"KV_{names.MODELS_BUCKET}",
    f"KV_{names.INSTALL_BUCKET}",
)
"""The JetStream streams `provision` makes (a bucket is `KV_<name>`, the file store
`OBJ_<name>`), in order."""


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create what is missing and bring what exists to these settings (replicas, ages)."""
    p, b = settings.protocol, settings.batch
    replicas = p.nats_replicas
    await streams.ensure_streams(js, p.jobs_max_age, replicas)
    await streams.ensure_usage_stream(js, replicas)
    await streams.ensure_batch_streams(js, b.job_retention, b.webhook_attempts, replicas)
    await streams.batch_buckets(js, b.job_retention, replicas)
    await streams.files_store(js, replicas)
    await streams.responses_buckets(js, b.response_retention, replicas)
    await streams.workers_bucket(js, p.heartbeat * 3, replicas)
    await streams.models_bucket(js, replicas)
    await streams.install_bucket(js, replicas)


async def run_provision(settings: Settings, watch: bool = False) -> None:
    """Connect (waiting for NATS, as the api does), provision (retried while a new cluster
    elects its leaders), then disconnect, or with `watch` stay until SIGTERM/SIGINT."""
    provisioner = Provisioner()
    nc = await connect(
        settings.connection.nats_url,
        "llmq-provision",
        settings.connection.nats_connect_timeout,
        on_reconnect=provisioner.reconnected,
        conn=settings.connection,
    )
    try:
        js = nc.jetstream()
        await retry(lambda: provision(js, settings), "provisioning NATS")
        log.info(
            "provisioned %s with %d replica(s)",
            ", ".join(PROVISIONED),
            settings.protocol.nats_replicas,
        )
        if not watch:
            return
        provisioner.add("everything", lambda: provision(js, settings))
        provisioner.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await provisioner.stop()
    finally:
        await disconnect(nc)


# --- the command -----------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    from llmq.api.logs import configure

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
