"""Provisioning of what async jobs, batches, files and the Responses API keep: the outcome
and webhook streams, their buckets and the files object store (docs/batch.md). Same rules
as `dispatcher.streams`: idempotent, `replicas` copies, a byte bound each, discard new."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.dispatcher.streams import (
    bounds_or_env,
    ensure_bucket,
    ensure_replicas,
    ensure_shared_consumer,
    ensure_stream,
    existing,
)
from llmq.schemas import names
from llmq.schemas.settings import StorageSettings


def outcomes_stream_config(max_age: float, replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    """Reply frames of async/batch jobs and LLMQ_BATCH's max-deliveries advisories, kept on
    disk until the collector has stored them; `max_age` only bounds what nobody collects."""
    return StreamConfig(
        name=names.OUTCOMES_STREAM,
        num_replicas=replicas,
        subjects=[f"{names.OUTCOME_PREFIX}.>", names.BATCH_MAX_DELIVERIES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=max_bytes,
        discard=DiscardPolicy.NEW,
    )


def webhooks_stream_config(max_age: float, replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    """`max_age`: a delivery nobody settles is dropped with its job's records."""
    return StreamConfig(
        name=names.WEBHOOKS_STREAM,
        num_replicas=replicas,
        subjects=[f"{names.WEBHOOK_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=max_age,
        duplicate_window=min(3600.0, max_age),
        max_bytes=max_bytes,
        discard=DiscardPolicy.NEW,
    )


async def ensure_batch_streams(
    js: JetStreamContext,
    retention: float,
    webhook_attempts: int = 8,
    replicas: int = 1,
    create: bool = True,
    *,
    limits: StorageSettings | None = None,
) -> None:
    """LLMQ_OUTCOMES and LLMQ_WEBHOOKS with their shared durable pull consumers. A webhook
    is delivered at most `webhook_attempts` + 2 times (the sender gives up after
    `webhook_attempts`; the margin covers an ack lost on the way)."""
    bound = bounds_or_env(limits)
    outcomes = outcomes_stream_config(retention, replicas, bound.outcomes_stream_max_bytes)
    await ensure_stream(js, outcomes, create)
    webhooks = webhooks_stream_config(retention, replicas, bound.webhooks_stream_max_bytes)
    await ensure_stream(js, webhooks, create)
    await ensure_shared_consumer(
        js,
        names.OUTCOMES_STREAM,
        names.COLLECTOR_CONSUMER,
        30.0,
        replicas=replicas,
        create=create,
    )
    await ensure_shared_consumer(
        js,
        names.WEBHOOKS_STREAM,
        names.WEBHOOK_CONSUMER,
        60.0,
        webhook_attempts + 2,
        replicas=replicas,
        create=create,
    )


Bounds = Callable[[StorageSettings], dict[str, tuple[int, bool]]]
"""A group of buckets: name -> (byte bound, whether entries go after `retention`; else they
are kept until deleted)."""


def _batch_bounds(bound: StorageSettings) -> dict[str, tuple[int, bool]]:
    return {
        names.RESULTS_BUCKET: (bound.results_max_bytes, True),
        names.ASYNC_JOBS_BUCKET: (bound.async_jobs_max_bytes, True),
        names.BATCHES_BUCKET: (bound.batches_max_bytes, True),
        names.FILE_META_BUCKET: (bound.file_meta_max_bytes, False),
    }


def _responses_bounds(bound: StorageSettings) -> dict[str, tuple[int, bool]]:
    return {
        names.RESPONSES_BUCKET: (bound.responses_max_bytes, True),
        names.CONVERSATIONS_BUCKET: (bound.conversations_max_bytes, True),
    }


async def ensure_buckets(
    group: Bounds,
    js: JetStreamContext,
    retention: float,
    replicas: int = 1,
    create: bool = True,
    *,
    limits: StorageSettings | None = None,
) -> dict[str, KeyValue]:
    """Each bucket of `group` (file storage), by name; `retention` 0 = kept until deleted."""
    return {
        name: await ensure_bucket(
            js,
            name,
            retention if ages else 0,
            StorageType.FILE,
            replicas,
            create=create,
            bound=max_bytes,
        )
        for name, (max_bytes, ages) in group(bounds_or_env(limits)).items()
    }


batch_buckets = functools.partial(ensure_buckets, _batch_bounds)
"""The KV buckets of async jobs, batches and file records."""
responses_buckets = functools.partial(ensure_buckets, _responses_bounds)
"""Stored responses and conversations."""


async def files_store(
    js: JetStreamContext,
    replicas: int = 1,
    create: bool = True,
    *,
    limits: StorageSettings | None = None,
) -> ObjectStore:
    if not create:
        store = names.FILES_OBJECT_STORE
        return await existing(f"object store {store}", lambda: js.object_store(store))
    bound = bounds_or_env(limits).files_max_total_bytes
    try:
        found = await js.object_store(names.FILES_OBJECT_STORE)
    except Exception:
        with contextlib.suppress(BadRequestError):
            await js.create_object_store(
                names.FILES_OBJECT_STORE,
                config=ObjectStoreConfig(
                    storage=StorageType.FILE,
                    description="llmq files",
                    replicas=replicas,
                    max_bytes=bound,
                ),
            )
        return await js.object_store(names.FILES_OBJECT_STORE)
    await ensure_replicas(js, f"OBJ_{names.FILES_OBJECT_STORE}", replicas, bound)
    return found
