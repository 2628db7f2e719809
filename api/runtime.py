"""The api process's long-lived connections, opened once in the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext
from redis.asyncio import Redis

from llmq.api.tenancy import check_at_start, connect_with
from llmq.api.tenancy.client import redis_target
from llmq.dispatcher import streams
from llmq.dispatcher.connection import Provisioner, connect, disconnect
from llmq.dispatcher.dispatch import Dispatcher
from llmq.dispatcher.inbox import ReplyInbox
from llmq.dispatcher.registry import WorkerRegistry
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

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        provisioner = Provisioner()
        nc = await connect(
            settings.connection.nats_url,
            f"llmq-api {settings.api.instance_id}",
            settings.connection.nats_connect_timeout,
            on_reconnect=provisioner.reconnected,
            conn=settings.connection,
        )
        js = nc.jetstream()
        replicas, create = settings.protocol.nats_replicas, settings.connection.nats_provision
        await streams.ensure_streams(js, settings.protocol.jobs_max_age, replicas, create)
        inbox = ReplyInbox(nc, settings.api.instance_id)
        await inbox.start()
        registry = WorkerRegistry(
            js, ttl=settings.protocol.heartbeat * 3, replicas=replicas, create=create
        )
        await registry.start()
        dispatcher = Dispatcher(
            nc, js, inbox, settings.protocol.ping_interval, settings.protocol.ack_wait
        )
        await dispatcher.start()
        redis = connect_with(settings.connection, timeout=settings.connection.redis_timeout)
        await check_at_start(
            redis, redis_target(settings.connection), settings.connection.redis_timeout
        )
        provisioner.add(
            "job streams",
            lambda: streams.ensure_streams(js, settings.protocol.jobs_max_age, replicas, create),
        )
        provisioner.add("lost jobs", dispatcher.find_missing)
        provisioner.add("registry", registry.rewatch)
        provisioner.start()
        return cls(settings, nc, js, inbox, dispatcher, registry, redis, provisioner)

    async def close(self) -> None:
        await self.provisioner.stop()
        await self.dispatcher.stop()
        await self.registry.stop()
        await self.inbox.stop()
        await disconnect(self.nc)
        with contextlib.suppress(Exception):
            await self.redis.aclose()
