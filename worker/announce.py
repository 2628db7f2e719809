"""Keeping this worker visible: its LLMQ_WORKERS entry (heartbeat) and its models in
LLMQ_MODELS (the catalog that outlives workers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher import streams
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names
from llmq.schemas.registry import ModelInfo, WorkerInfo, registry_encoder

log = logging.getLogger(__name__)

LEAVE_TIMEOUT = 1.0
"""Seconds a stopping worker tries to leave the registry (its entry ages out otherwise)."""


class Announcer:
    def __init__(
        self,
        js: JetStreamContext,
        snapshot: Callable[[], WorkerInfo],
        heartbeat: float,
        kinds: list[str],
        replicas: int = 1,
        *,
        create: bool = True,
        endpoints: list[str] | None = None,
    ) -> None:
        self.replicas = replicas
        self.create = create
        """False: both buckets are looked up, never created (LLMQ_NATS_PROVISION)."""
        self._js = js
        self._snapshot = snapshot
        self._heartbeat = heartbeat
        self._kinds = kinds
        self._endpoints = endpoints or []
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.provision()
        self._task = asyncio.create_task(self._loop(), name="heartbeat")

    async def provision(self) -> None:
        """Make sure both buckets exist (a restarted nats-server has lost LLMQ_WORKERS, which
        lives in memory), list our models and announce ourselves."""
        self._kv = await streams.workers_bucket(
            self._js, self._heartbeat * 3, self.replicas, self.create
        )
        info = self._snapshot()
        models = await streams.models_bucket(self._js, self.replicas, self.create)
        for model in info.models:
            entry = ModelInfo(
                name=model,
                backend=info.backend,
                first_seen=time.time(),
                kinds=self._kinds,
                endpoints=self._endpoints,
            )
            await models.put(names.model_kv_key(model), registry_encoder.encode(entry))
        await self.beat()

    async def beat(self) -> None:
        """Publish the current state now (also called when it changes, e.g. circuit opens)."""
        if self._kv is None:
            return
        info = self._snapshot()
        info.heartbeat_at = time.time()
        await self._kv.put(info.id, registry_encoder.encode(info))

    async def _loop(self) -> None:
        """Beat every `heartbeat` seconds. A beat that fails (the bucket electing a leader,
        this process moving to another node) is tried again within a quarter heartbeat,
        each try bounded by one heartbeat: the api ages a worker out after three silent
        ones, and a cluster failover must not make it look dead."""
        failing = False
        while True:
            await asyncio.sleep(self._heartbeat / 4 if failing else self._heartbeat)
            try:
                async with asyncio.timeout(self._heartbeat):
                    await self._beat_or_provision(failing)
            except Exception as exc:
                if not failing:
                    log.warning("heartbeat failed: %s", exc or type(exc).__name__)
                failing = True
                continue
            if failing:
                log.info("heartbeat restored")
            failing = False

    async def _beat_or_provision(self, failing: bool) -> None:
        """A beat; after a failed one, if it fails again, provision too: the bucket may be
        gone (deleted, or a restarted server lost it)."""
        try:
            await self.beat()
        except Exception:
            if not failing:
                raise
            await self.provision()

    async def stop(self, leave: bool = True) -> None:
        """Leave the registry at once, so the api stops routing here (`leave` False: NATS is
        away, the entry ages out instead)."""
        if self._task is not None:
            await stop_task(self._task)
        if self._kv is not None and leave:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):  # NATS may be away: bounded
                    await self._kv.delete(self._snapshot().id)
