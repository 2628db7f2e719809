"""The api process's long-lived connections, opened once in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext
from redis.asyncio import Redis

from llmq.api.startup import Startup
from llmq.api.tenancy import check_at_start, connect_with
from llmq.api.tenancy.client import redis_target
from llmq.dispatcher import streams
from llmq.dispatcher.connection import Provisioner, connect, disconnect, redact_url
from llmq.dispatcher.dispatch import Dispatcher
from llmq.dispatcher.inbox import ReplyInbox
from llmq.dispatcher.registry import WorkerRegistry
from llmq.dispatcher.tasks import retry, stop_task
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    nc: Client
    js: JetStreamContext
    inbox: ReplyInbox
    dispatcher: Dispatcher
    registry: WorkerRegistry
    redis: Redis
    provisioner: Provisioner
    """Steps re-run after a reconnect; the batch service adds its own."""
    open_streams: int = 0
    accepting: bool = True
    extras: dict[str, object] = field(default_factory=dict)
    redis_wait: asyncio.Task[None] | None = None
    """While Redis was not usable at start: retries it, logging what it waits for."""

    @classmethod
    async def open(cls, settings: Settings, startup: Startup | None = None) -> Runtime:
        """Connect and provision, each step retried with backoff until the start-up deadline
        (`startup` says what the api waits for meanwhile: `/ready`, the logs)."""
        startup = startup or Startup(settings)
        provisioner = Provisioner()
        startup.waiting_for = f"NATS at {redact_url(settings.connection.nats_url)}"
        nc = await connect(
            settings.connection.nats_url,
            f"llmq-api {settings.api.instance_id}",
            settings.connection.nats_connect_timeout,
            on_reconnect=provisioner.reconnected,
            conn=settings.connection,
            deadline=startup.deadline,
        )
        try:
            return await cls._provision(settings, startup, nc, provisioner)
        except BaseException:
            await disconnect(nc)
            raise

    @classmethod
    async def _provision(
        cls, settings: Settings, startup: Startup, nc: Client, provisioner: Provisioner
    ) -> Runtime:
        js = nc.jetstream()
        replicas, create = settings.protocol.nats_replicas, settings.connection.nats_provision

        async def job_streams() -> None:
            await streams.ensure_streams(
                js, settings.protocol.jobs_max_age, replicas, create, limits=settings.storage
            )

        async with contextlib.AsyncExitStack() as undo:  # what started, stopped on a failure
            await startup.step("the job streams", job_streams)
            buffer = settings.storage.stream_buffer_bytes  # per stream (api/engine/job.py)
            inbox = ReplyInbox(nc, settings.api.instance_id, buffer)
            await inbox.start()
            undo.push_async_callback(inbox.stop)
            registry = WorkerRegistry(
                js, ttl=settings.protocol.heartbeat * 3, replicas=replicas, create=create
            )
            await startup.step("the worker registry", registry.start)
            undo.push_async_callback(registry.stop)
            await startup.step("the worker registry's replay", registry.replayed)
            dispatcher = Dispatcher(
                nc, js, inbox, settings.protocol.ping_interval, settings.protocol.ack_wait
            )
            await dispatcher.start()
            undo.push_async_callback(dispatcher.stop)
            redis = connect_with(settings.connection, timeout=settings.connection.redis_timeout)
            target = redis_target(settings.connection)
            timeout = settings.connection.redis_timeout
            redis_ok = await check_at_start(redis, target, timeout)
            provisioner.add("job streams", job_streams)
            provisioner.add("lost jobs", dispatcher.find_missing)
            provisioner.add("registry", registry.rewatch)
            provisioner.start()
            undo.pop_all()
        runtime = cls(settings, nc, js, inbox, dispatcher, registry, redis, provisioner)
        if not redis_ok:  # served meanwhile (503s, /ready failing): say when it is back
            what = f"api waiting for Redis at {redact_url(target)}"
            runtime.redis_wait = asyncio.create_task(
                retry(lambda: _ping(redis, timeout), what, max_pause=5.0), name="redis-wait"
            )
        return runtime

    async def close(self) -> None:
        if self.redis_wait is not None:
            await stop_task(self.redis_wait)
        await self.provisioner.stop()
        await self.dispatcher.stop()
        await self.registry.stop()
        await self.inbox.stop()
        await disconnect(self.nc)
        with contextlib.suppress(Exception):
            await self.redis.aclose()


async def _ping(redis: Redis, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await redis.ping()
    log.info("Redis is reachable")
