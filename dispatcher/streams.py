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

Every stream, bucket and object store has a byte bound (`StorageSettings`) and discards new
messages at it: a full store refuses a write instead of dropping what it holds (a queued
job, a running job's record); the api refuses new durable work before that
(`api.batch.store_room`). An existing store is brought to the configured bound at start.
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
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from llmq.schemas import names
from llmq.schemas.settings import StorageSettings

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


def bounds_or_env(limits: StorageSettings | None) -> StorageSettings:
    """The bounds given, else those of the environment (`LLMQ_*_MAX_BYTES`)."""
    return limits if limits is not None else StorageSettings()


def jobs_stream_config(max_age: float, replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=names.JOBS_STREAM,
        subjects=[f"{names.JOBS_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY,
        max_age=max_age,
        duplicate_window=min(120.0, max_age),
        max_bytes=max_bytes,
        discard=DiscardPolicy.NEW,
    )


def batch_stream_config(replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=names.BATCH_STREAM,
        subjects=[f"{names.BATCH_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,
        max_bytes=max_bytes,
        discard=DiscardPolicy.NEW,
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
    js: JetStreamContext,
    jobs_max_age: float,
    replicas: int = 1,
    create: bool = True,
    *,
    limits: StorageSettings | None = None,
) -> None:
    bound = bounds_or_env(limits)
    jobs = jobs_stream_config(jobs_max_age, replicas, bound.jobs_stream_max_bytes)
    await ensure_stream(js, jobs, create)
    await ensure_stream(js, batch_stream_config(replicas, bound.batch_stream_max_bytes), create)


async def ensure_replicas(
    js: JetStreamContext, stream: str, replicas: int, max_bytes: int | None = None
) -> None:
    """Bring an existing stream (also a bucket's or object store's) to `replicas` copies
    and to `max_bytes` (discarding new messages at it), keeping the rest of its
    configuration."""
    info = await js.stream_info(stream)
    config = info.config
    changed = (config.num_replicas or 1) != replicas
    config.num_replicas = replicas
    if max_bytes is not None and (config.max_bytes, config.discard) != (
        max_bytes,
        DiscardPolicy.NEW,
    ):
        config.max_bytes, config.discard, changed = max_bytes, DiscardPolicy.NEW, True
    if changed:
        await js.update_stream(config)


async def _ensure_consumer_config(
    js: JetStreamContext, stream: str, config: ConsumerConfig
) -> None:
    """Create the durable consumer, or update it in place when its replica count, ack wait
    or delivery limit differs (each may change on a live consumer)."""
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):
            await js.add_consumer(stream, config)
        return
    replicas_differ = (info.config.num_replicas or 0) != (config.num_replicas or 0)
    delivery_differs = (info.config.max_deliver or -1) != (config.max_deliver or -1)
    if replicas_differ or delivery_differs or info.config.ack_wait != config.ack_wait:
        info.config.num_replicas = config.num_replicas
        info.config.ack_wait = config.ack_wait
        info.config.max_deliver = config.max_deliver
        with contextlib.suppress(BadRequestError):  # another process updated it first
            await js.add_consumer(stream, info.config)


def usage_stream_config(replicas: int = 1, max_bytes: int = -1) -> StreamConfig:
    """Final usage of interactive jobs (`schemas.usage`): kept on disk until booked; a day
    at most (the reservation it would settle is forgotten by then)."""
    return StreamConfig(
        name=names.USAGE_STREAM,
        subjects=[f"{names.USAGE_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=86_400.0,
        num_replicas=replicas,
        max_bytes=max_bytes,
        discard=DiscardPolicy.NEW,
    )


async def ensure_usage_stream(
    js: JetStreamContext,
    replicas: int = 1,
    create: bool = True,
    *,
    limits: StorageSettings | None = None,
) -> None:
    """LLMQ_USAGE and the api replicas' shared durable consumer on it."""
    config = usage_stream_config(replicas, bounds_or_env(limits).usage_stream_max_bytes)
    await ensure_stream(js, config, create)
    await ensure_shared_consumer(
        js, names.USAGE_STREAM, names.USAGE_CONSUMER, 10.0, replicas=replicas, create=create
    )


async def ensure_shared_consumer(
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
    return await _registry(
        js, names.WORKERS_BUCKET, ttl, StorageType.MEMORY, replicas, create=create
    )


async def install_bucket(js: JetStreamContext, replicas: int = 1, create: bool = True) -> KeyValue:
    return await _registry(js, names.INSTALL_BUCKET, 0, StorageType.FILE, replicas, create=create)


async def models_bucket(js: JetStreamContext, replicas: int = 1, create: bool = True) -> KeyValue:
    return await _registry(js, names.MODELS_BUCKET, 0, StorageType.FILE, replicas, create=create)


async def _registry(
    js: JetStreamContext,
    name: str,
    ttl: float,
    storage: StorageType,
    replicas: int,
    *,
    create: bool,
) -> KeyValue:
    """A registry bucket (workers, models, the install marker), bounded by
    `registry_max_bytes`."""
    bound = bounds_or_env(None).registry_max_bytes
    return await ensure_bucket(js, name, ttl, storage, replicas, create=create, bound=bound)


async def ensure_bucket(
    js: JetStreamContext,
    name: str,
    ttl: float,
    storage: StorageType,
    replicas: int = 1,
    *,
    create: bool = True,
    bound: int = -1,
) -> KeyValue:
    """The bucket, made with `bound` bytes at most (KV buckets discard new messages)."""
    if not create:
        return await existing(f"KV bucket {name}", lambda: js.key_value(name))
    try:
        found = await js.key_value(name)
    except Exception:
        config = KeyValueConfig(
            bucket=name,
            history=1,
            ttl=ttl or None,
            storage=storage,
            replicas=replicas,
            max_bytes=bound,
        )
        with contextlib.suppress(BadRequestError):
            await js.create_key_value(config)
        return await js.key_value(name)
    await ensure_replicas(js, f"KV_{name}", replicas, bound)
    return found
