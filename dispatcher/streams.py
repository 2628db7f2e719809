"""Provisioning of the JetStream streams, per-model consumers and KV buckets.

Every call is idempotent, so the api and each worker may run it at start: whoever comes
first creates, the others find what they need. Everything is created with `replicas`
copies (`LLMQ_NATS_REPLICAS`: 1 on one node, 3 on a cluster); what exists with another
count is brought to it in place (a KV bucket is the stream `KV_<bucket>`, an object store
`OBJ_<store>`), so raising the setting and restarting the processes moves a deployment
from 1 to 3 (docs/operations.md).

With `create=False` (`LLMQ_NATS_PROVISION=false`: a deployment whose runtime NATS users may
not create streams or buckets, docs/security.md) a call only looks up what `llmq provision`
made, and waits while it is missing, saying what it waits for. A worker's own per-model
consumers are made by the worker either way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.schemas import names

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotProvisioned(RuntimeError):
    """A stream, bucket or shared consumer this process may not create does not exist yet.
    Its caller retries (`dispatcher.tasks.retry`: at start until LLMQ_STARTUP_TIMEOUT, after a
    reconnect for ever), logging this message: what is missing and who makes it."""


async def existing(what: str, lookup: Callable[[], Awaitable[T]]) -> T:
    """`lookup()`'s result; `NotProvisioned`, naming it, while it does not exist."""
    try:
        return await lookup()
    except NotFoundError:
        raise NotProvisioned(
            f"NATS {what} does not exist yet (LLMQ_NATS_PROVISION=false: this process creates "
            "no stream or bucket; run `llmq provision`)"
        ) from None


def jobs_stream_config(max_age: float, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=names.JOBS_STREAM,
        subjects=[f"{names.JOBS_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY,
        max_age=max_age,
        duplicate_window=min(120.0, max_age),
    )


def batch_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=names.BATCH_STREAM,
        subjects=[f"{names.BATCH_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig, create: bool = True) -> None:
    assert config.name is not None
    if not create:
        name = config.name
        await existing(f"stream {name}", lambda: js.stream_info(name))
        return
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings: bring it to ours (subjects and retention are fixed).
        await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext, jobs_max_age: float, replicas: int = 1, create: bool = True
) -> None:
    await ensure_stream(js, jobs_stream_config(jobs_max_age, replicas), create)
    await ensure_stream(js, batch_stream_config(replicas), create)


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Bring an existing stream (also a bucket's or object store's) to `replicas` copies,
    keeping the rest of its configuration."""
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) != replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)


async def _ensure_consumer_config(
    js: JetStreamContext, stream: str, config: ConsumerConfig
) -> None:
    """Create the durable consumer, or update it in place when its replica count or ack wait
    differs (both may change on a live consumer)."""
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):
            await js.add_consumer(stream, config)
        return
    replicas_differ = (info.config.num_replicas or 0) != (config.num_replicas or 0)
    if replicas_differ or info.config.ack_wait != config.ack_wait:
        info.config.num_replicas = config.num_replicas
        info.config.ack_wait = config.ack_wait
        with contextlib.suppress(BadRequestError):  # another process updated it first
            await js.add_consumer(stream, info.config)


def usage_stream_config(replicas: int = 1) -> StreamConfig:
    """Final usage of interactive jobs (`schemas.usage`): kept on disk until booked; a day
    at most (the reservation it would settle is forgotten by then)."""
    return StreamConfig(
        name=names.USAGE_STREAM,
        subjects=[f"{names.USAGE_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=86_400.0,
        num_replicas=replicas,
    )


async def ensure_usage_stream(js: JetStreamContext, replicas: int = 1, create: bool = True) -> None:
    """LLMQ_USAGE and the api replicas' shared durable consumer on it."""
    await ensure_stream(js, usage_stream_config(replicas), create)
    await _ensure_shared_consumer(
        js, names.USAGE_STREAM, names.USAGE_CONSUMER, 10.0, replicas=replicas, create=create
    )


async def _ensure_shared_consumer(
    js: JetStreamContext,
    stream: str,
    name: str,
    ack_wait: float,
    max_deliver: int = -1,
    *,
    replicas: int = 1,
    create: bool = True,
) -> None:
    """A durable pull consumer every api replica pulls from; one made by an older version
    (or with another replica count or delivery limit) is brought up to date."""
    if not create:
        await existing(f"consumer {name} of {stream}", lambda: js.consumer_info(stream, name))
        return
    config = ConsumerConfig(
        durable_name=name,
        name=name,
        description="llmq api replicas",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_waiting=512,
        max_ack_pending=20_000,
        num_replicas=replicas,
    )
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):
            await js.add_consumer(stream, config)
        return
    current = info.config
    if (current.max_deliver or -1) != max_deliver or (current.num_replicas or 0) != replicas:
        with contextlib.suppress(BadRequestError):
            await js.add_consumer(stream, config)


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    model: str,
    ack_wait: float,
    max_deliver: int,
    *,
    replicas: int = 1,
) -> str:
    """The durable pull consumer of `model` on `stream`, shared by all its workers."""
    name = names.consumer_name(stream, model)
    subject = (
        names.jobs_subject(model) if stream == names.JOBS_STREAM else names.batch_subject(model)
    )
    config = ConsumerConfig(
        durable_name=name,
        name=name,
        description=f"llmq workers of model {model}",
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_waiting=4096,
        max_ack_pending=-1,
        num_replicas=replicas,
    )
    await _ensure_consumer_config(js, stream, config)
    return name


async def workers_bucket(
    js: JetStreamContext, ttl: float, replicas: int = 1, create: bool = True
) -> KeyValue:
    return await _bucket(js, names.WORKERS_BUCKET, ttl, StorageType.MEMORY, replicas, create=create)


async def install_bucket(js: JetStreamContext, replicas: int = 1, create: bool = True) -> KeyValue:
    return await _bucket(js, names.INSTALL_BUCKET, 0, StorageType.FILE, replicas, create=create)


async def models_bucket(js: JetStreamContext, replicas: int = 1, create: bool = True) -> KeyValue:
    return await _bucket(js, names.MODELS_BUCKET, 0, StorageType.FILE, replicas, create=create)


async def _bucket(
    js: JetStreamContext,
    name: str,
    ttl: float,
    storage: StorageType,
    replicas: int = 1,
    *,
    create: bool = True,
) -> KeyValue:
    if not create:
        return await existing(f"KV bucket {name}", lambda: js.key_value(name))
    try:
        found = await js.key_value(name)
    except Exception:
        config = KeyValueConfig(
            bucket=name, history=1, ttl=ttl or None, storage=storage, replicas=replicas
        )
        with contextlib.suppress(BadRequestError):
            await js.create_key_value(config)
        return await js.key_value(name)
    await ensure_replicas(js, f"KV_{name}", replicas)
    return found


# --- async jobs and batches (docs/batch.md) ----------------------------------------------


def outcomes_stream_config(max_age: float, replicas: int = 1) -> StreamConfig:
    """Reply frames of async/batch jobs and LLMQ_BATCH's max-deliveries advisories, kept on
    disk until the collector has stored them; `max_age` only bounds what nobody collects."""
    return StreamConfig(
        name=names.OUTCOMES_STREAM,
        num_replicas=replicas,
        subjects=[f"{names.OUTCOME_PREFIX}.>", names.BATCH_MAX_DELIVERIES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=max_age,
    )


def webhooks_stream_config(max_age: float, replicas: int = 1) -> StreamConfig:
    """`max_age`: a delivery nobody settles is dropped with its job's records."""
    return StreamConfig(
        name=names.WEBHOOKS_STREAM,
        num_replicas=replicas,
        subjects=[f"{names.WEBHOOK_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=max_age,
        duplicate_window=min(3600.0, max_age),
    )


async def ensure_batch_streams(
    js: JetStreamContext,
    retention: float,
    webhook_attempts: int = 8,
    replicas: int = 1,
    create: bool = True,
) -> None:
    """LLMQ_OUTCOMES and LLMQ_WEBHOOKS with their shared durable pull consumers. A webhook
    is delivered at most `webhook_attempts` + 2 times (the sender gives up after
    `webhook_attempts`; the margin covers an ack lost on the way)."""
    await ensure_stream(js, outcomes_stream_config(retention, replicas), create)
    await ensure_stream(js, webhooks_stream_config(retention, replicas), create)
    await _ensure_shared_consumer(
        js, names.OUTCOMES_STREAM, names.COLLECTOR_CONSUMER, 30.0, replicas=replicas, create=create
    )
    await _ensure_shared_consumer(
        js,
        names.WEBHOOKS_STREAM,
        names.WEBHOOK_CONSUMER,
        60.0,
        webhook_attempts + 2,
        replicas=replicas,
        create=create,
    )


async def batch_buckets(
    js: JetStreamContext, retention: float, replicas: int = 1, create: bool = True
) -> dict[str, KeyValue]:
    """The KV buckets of async jobs and batches (file storage), by name."""
    out = {}
    for name in (
        names.RESULTS_BUCKET,
        names.ASYNC_JOBS_BUCKET,
        names.BATCHES_BUCKET,
    ):
        out[name] = await _bucket(js, name, retention, StorageType.FILE, replicas, create=create)
    out[names.FILE_META_BUCKET] = await _bucket(
        js, names.FILE_META_BUCKET, 0, StorageType.FILE, replicas, create=create
    )
    return out


async def responses_buckets(
    js: JetStreamContext, retention: float, replicas: int = 1, create: bool = True
) -> dict[str, KeyValue]:
    """Stored responses and conversations (file storage; `retention` 0 = kept until deleted)."""
    return {
        name: await _bucket(js, name, retention, StorageType.FILE, replicas, create=create)
        for name in (names.RESPONSES_BUCKET, names.CONVERSATIONS_BUCKET)
    }


async def files_store(js: JetStreamContext, replicas: int = 1, create: bool = True) -> ObjectStore:
    if not create:
        store = names.FILES_OBJECT_STORE
        return await existing(f"object store {store}", lambda: js.object_store(store))
    try:
        found = await js.object_store(names.FILES_OBJECT_STORE)
    except Exception:
        with contextlib.suppress(BadRequestError):
            await js.create_object_store(
                names.FILES_OBJECT_STORE,
                config=ObjectStoreConfig(
                    storage=StorageType.FILE, description="llmq files", replicas=replicas
                ),
            )
        return await js.object_store(names.FILES_OBJECT_STORE)
    await ensure_replicas(js, f"OBJ_{names.FILES_OBJECT_STORE}", replicas)
    return found
