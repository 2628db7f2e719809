"""Reading llmq's raw state straight from NATS. Nothing here writes or creates anything.

- queues: the per-model pull consumers of LLMQ_JOBS and LLMQ_BATCH (jobs waiting, jobs
  delivered but not acked, open pull requests);
- the worker registry and model catalog: the LLMQ_WORKERS and LLMQ_MODELS buckets;
- the NATS micro services `llmq-worker` and `llmq-api`, asked with `$SRV.PING|INFO|STATS`.

`inspect` puts these together for the operator commands; the api's `/metrics` reads queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.micro.service import ServiceVerb, control_subject

from llmq.schemas import names
from llmq.schemas.registry import ModelInfo, WorkerInfo, model_info_decoder, worker_info_decoder
from llmq.schemas.services import WorkerMetadata

STREAMS = (names.JOBS_STREAM, names.BATCH_STREAM)
_CONSUMER_PAGE = 256


# --- queues ----------------------------------------------------------------------------------


@dataclass(slots=True)
class QueueState:
    """One model's pull consumer on one stream."""

    stream: str
    model: str
    consumer: str
    pending: int = 0
    """Jobs queued and not yet delivered to any worker."""
    ack_pending: int = 0
    """Jobs delivered to a worker and not yet acked (starting, or held for a free slot)."""
    waiting: int = 0
    """Open pull requests: free worker slots asking for a job."""
    redelivered: int = 0
    delivered_seq: int = 0
    """Last stream sequence delivered: messages at or below it have been handed out."""


def _model_of_consumer(stream: str, consumer: str) -> str | None:
    prefix = "batch-" if stream == names.BATCH_STREAM else "jobs-"
    if not consumer.startswith(prefix):
        return None
    try:
        return names.unescape_model(consumer[len(prefix) :])
    except (ValueError, UnicodeDecodeError):
        return None


async def queue_states(js: JetStreamContext) -> list[QueueState]:
    """Every llmq consumer of both streams (two requests per 256 consumers)."""
    states: list[QueueState] = []
    for stream in STREAMS:
        offset = 0
        while True:
            try:
                page = await js.consumers_info(stream, offset=offset or None)
            except NotFoundError:
                break
            for info in page:
                model = _model_of_consumer(stream, info.name)
                if model is None:
                    continue
                states.append(
                    QueueState(
                        stream=stream,
                        model=model,
                        consumer=info.name,
                        pending=info.num_pending or 0,
                        ack_pending=info.num_ack_pending or 0,
                        waiting=info.num_waiting or 0,
                        redelivered=info.num_redelivered or 0,
                        delivered_seq=(info.delivered.stream_seq or 0) if info.delivered else 0,
                    )
                )
            if len(page) < _CONSUMER_PAGE:
                break
            offset += len(page)
    return states


# --- registry --------------------------------------------------------------------------------


async def bucket_values(js: JetStreamContext, bucket: str, timeout: float) -> list[bytes]:
    """The current value of every key: the stream's subject list, then the last message of
    each. (A KV watcher's "caught up" marker can arrive before the values it announces.)
    Raises when the bucket's stream does not answer within `timeout` (or is gone)."""
    stream = f"KV_{bucket}"
    async with asyncio.timeout(timeout):
        info = await js.stream_info(stream, subjects_filter=f"$KV.{bucket}.>")
        subjects = sorted((info.state.subjects or {}) if info.state else {})
        messages = await asyncio.gather(
            *(js.get_last_msg(stream, subject) for subject in subjects),
            return_exceptions=True,
        )
    values: list[bytes] = []
    for msg in messages:
        if isinstance(msg, BaseException) or not msg.data:
            continue  # gone meanwhile (expired, deleted)
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            continue
        values.append(msg.data)
    return values


async def _bucket_values(js: JetStreamContext, bucket: str, timeout: float) -> list[bytes]:
    """`bucket_values`, or none when the bucket is missing or does not answer."""
    try:
        return await bucket_values(js, bucket, timeout)
    except (NotFoundError, TimeoutError):
        return []


async def read_workers(js: JetStreamContext, timeout: float = 2.0) -> list[WorkerInfo]:
    """The entries of LLMQ_WORKERS (expired ones are gone: the bucket has a TTL)."""
    workers = []
    for raw in await _bucket_values(js, names.WORKERS_BUCKET, timeout):
        with contextlib.suppress(Exception):
            workers.append(worker_info_decoder.decode(raw))
    return sorted(workers, key=lambda w: w.id)


async def read_models(js: JetStreamContext, timeout: float = 2.0) -> list[ModelInfo]:
    models = []
    for raw in await _bucket_values(js, names.MODELS_BUCKET, timeout):
        with contextlib.suppress(Exception):
            models.append(model_info_decoder.decode(raw))
    return sorted(models, key=lambda m: m.name)


# --- micro services --------------------------------------------------------------------------


async def micro_gather(
    nc: Client,
    verb: str,
    service: str | None,
    timeout: float = 1.0,
    *,
    quiet: float = 0.2,
    expect: Collection[str] | None = None,
    key: Callable[[Any], str] | None = None,
) -> list[dict[str, Any]]:
    """Ask every instance of a micro service (`PING`, `INFO` or `STATS`; `service` None:
    every service) and collect the replies for at most `timeout` seconds. With `expect`
    (the instances known alive, as `key` names a reply: by default the worker ids the
    registry knows) it waits until each of them answered, so a slow, loaded one is not left
    out, and then until no reply came for `quiet` seconds (0: not at all); without, it stops
    `quiet` seconds after the last reply (`quiet` >= `timeout`: at `timeout`)."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    missing = set(expect or ())
    name = key or worker_of
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    last = loop.time()

    async def on_reply(msg: Msg) -> None:
        nonlocal last
        with contextlib.suppress(ValueError):
            reply = json.loads(msg.data)
            replies.append(reply)
            if missing:
                missing.discard(name(reply))
            last = loop.time()
            arrived.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(control_subject(ServiceVerb(verb), name=service), b"", reply=inbox)
        deadline = loop.time() + timeout
        while (now := loop.time()) < deadline:
            waiting = bool(missing) if expect is not None else not replies
            if not waiting and now - last >= quiet:
                break
            arrived.clear()
            until = deadline if waiting else min(deadline, last + quiet)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(until - now):
                    await arrived.wait()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return replies


def worker_of(reply: Any) -> str:
    """The worker id in an `llmq-worker` micro reply's metadata ("" for another service)."""
    meta = reply.get("metadata") if isinstance(reply, dict) else None
    return WorkerMetadata.from_metadata(meta).worker_id if isinstance(meta, dict) else ""
