"""Provisioning of the JetStream streams, per-model consumers and KV buckets.

Every call is idempotent, so the api and each worker may run it at start: whoever comes
first creates, the others find what they need.
"""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from schemas import names


def jobs_stream_config(max_age: float) -> StreamConfig:
    return StreamConfig(
        name=names.JOBS_STREAM,
        subjects=[f"{names.JOBS_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.MEMORY,
        max_age=max_age,
        duplicate_window=min(120.0, max_age),
    )


def batch_stream_config() -> StreamConfig:
    return StreamConfig(
        name=names.BATCH_STREAM,
        subjects=[f"{names.BATCH_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings: bring it to ours (subjects and retention are fixed).
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, jobs_max_age: float) -> None:
    await ensure_stream(js, jobs_stream_config(jobs_max_age))
    await ensure_stream(js, batch_stream_config())


async def ensure_consumer(
    js: JetStreamContext, stream: str, model: str, ack_wait: float, max_deliver: int
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
    )
    try:
        await js.consumer_info(stream, name)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):
            await js.add_consumer(stream, config)
    return name


async def workers_bucket(js: JetStreamContext, ttl: float) -> KeyValue:
    return await _bucket(js, names.WORKERS_BUCKET, ttl=ttl, storage=StorageType.MEMORY)


async def models_bucket(js: JetStreamContext) -> KeyValue:
    return await _bucket(js, names.MODELS_BUCKET, ttl=0, storage=StorageType.FILE)


async def _bucket(js: JetStreamContext, name: str, ttl: float, storage: StorageType) -> KeyValue:
    try:
        return await js.key_value(name)
    except Exception:
        config = KeyValueConfig(bucket=name, history=1, ttl=ttl or None, storage=storage)
        with contextlib.suppress(BadRequestError):
            await js.create_key_value(config)
        return await js.key_value(name)
