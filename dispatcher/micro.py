"""NATS micro services whose metadata and endpoints are computed when asked.

nats-py's `Service` builds INFO and STATS from endpoints registered with handlers, and with a
null description and null endpoint data, which the io.nats.micro.v1 schemas reject. llmq's
services describe work that arrives another way (jobs pulled from JetStream, HTTP requests),
so a subclass says what its metadata (a typed `schemas.services` struct) and endpoints are
right now, and this class answers PING, INFO and STATS with it.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    Service,
    ServiceConfig,
    ServiceInfo,
    ServiceStats,
)

from llmq.schemas.services import ServiceMetadata

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
"""Seconds a service's stop may take: nats-py drains each of its nine PING/INFO/STATS
subscriptions with a flush of up to 10 s, about 90 s while NATS is away."""


class LiveService(Service):
    def __init__(self, nc: Client, name: str, version: str, description: str) -> None:
        super().__init__(nc, ServiceConfig(name=name, version=version, description=description))
        self._description = description

    async def stop(self) -> None:
        """Bounded and quiet: with NATS away there is nothing to drain (the server forgets the
        subscriptions with the connection), and a process's shutdown must not wait for it."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await super().stop()
        except Exception as exc:
            log.debug("micro service stop cut short: %s", exc or type(exc).__name__)

    def live_metadata(self) -> ServiceMetadata:
        raise NotImplementedError

    def endpoint_infos(self) -> list[EndpointInfo]:
        raise NotImplementedError

    def endpoint_stats(self) -> list[EndpointStats]:
        raise NotImplementedError

    def _refresh(self) -> None:
        self._metadata = self.live_metadata().to_metadata()

    async def _handle_ping_request(self, msg: Msg) -> None:
        self._refresh()
        await super()._handle_ping_request(msg)

    def info(self) -> ServiceInfo:
        self._refresh()
        return ServiceInfo(
            id=self._id,
            name=self._name,
            version=self._version,
            description=self._description,
            metadata=self._metadata,
            endpoints=self.endpoint_infos(),
        )

    def stats(self) -> ServiceStats:
        self._refresh()
        return ServiceStats(
            id=self._id,
            name=self._name,
            version=self._version,
            started=self._started,
            metadata=self._metadata,
            endpoints=self.endpoint_stats(),
        )
