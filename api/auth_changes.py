"""A tenant's record or keys changed (a key revoked; the tenant suspended, updated or
deleted): the api that made the change says so on NATS, and every api, itself included,
drops what its key cache holds of that tenant (`llmq tenants|keys` announce their changes
the same way). So a revoked key or a deleted tenant stops working on every replica as fast
as a NATS message travels, not after `key_cache_ttl`."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmq._fast import nats as fast_nats
from llmq.api.auth import Authenticator
from llmq.dispatcher.connection import unsubscribe
from llmq.schemas import names

log = logging.getLogger(__name__)


class AuthChanges:
    def __init__(self, nc: Client, auth: Authenticator) -> None:
        self.nc = nc
        self.auth = auth
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(names.AUTH_CHANGED, cb=self._on_change)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe(sub)

    async def _on_change(self, msg: Msg) -> None:
        self.auth.forget_tenant(msg.data.decode(errors="replace"))

    async def changed(self, tenant: str) -> None:
        """Tell every api (this one at once) to forget `tenant`'s cached records."""
        self.auth.forget_tenant(tenant)
        try:
            await announce(self.nc, tenant)
        except Exception as exc:  # the others' caches still expire after key_cache_ttl
            log.warning("could not announce a change of tenant %s: %s", tenant, type(exc).__name__)


async def announce(nc: Client, tenant: str) -> None:
    """Tell every api to forget `tenant`'s cached records (the admin API and `llmq
    tenants|keys`, which change them straight in Redis); raises when NATS did not take it."""
    await nc.publish(names.AUTH_CHANGED, tenant.encode())
    # not nc.flush: a flush that times out leaves nats-py deaf to the PONG that comes later
    if not await fast_nats.round_trip(nc, 1.0):
        raise TimeoutError("NATS did not answer within 1 s")
