"""The api's live view of the worker registry (LLMQ_WORKERS) and model catalog (LLMQ_MODELS).

Both buckets are watched, so answering `/v1/models` or "is anyone serving this model?" is a
dict lookup. A worker counts as live while its last heartbeat is younger than the bucket's
TTL; one that stops cleanly deletes its key, one that dies simply ages out. A view that
hears nothing while the bucket does not answer either is cut off (the api reconnecting, the
bucket electing a new leader after a cluster node died), not watching every worker die: its
clock stops for up to one more TTL, so a failover is not taken for "no worker" (see
`live_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher import streams
from llmq.dispatcher.kv import Follower
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names
from llmq.schemas.registry import (
    ModelInfo,
    WorkerInfo,
    model_info_decoder,
    worker_info_decoder,
)

log = logging.getLogger(__name__)

_MODELS_RESYNC = 30.0
"""Seconds of silence after which the model catalog's watch is re-opened."""


class WorkerRegistry:
    def __init__(self, js: JetStreamContext, ttl: float, replicas: int = 1) -> None:
        self._js = js
        self.ttl = ttl
        self.replicas = replicas
        self._heard_at = time.time()
        """When the workers' watch last delivered news: a new heartbeat or a departure (local
        clock; a replay of the same entries after re-opening the watch is no news)."""
        self._answered_at = time.time()
        """When a probe of the bucket, sent at this time, was answered."""
        self._prober: asyncio.Task[None] | None = None
        self._workers: dict[str, WorkerInfo] = {}
        self._models: dict[str, ModelInfo] = {}
        """By LLMQ_MODELS key (`names.model_kv_key`)."""
        self._followers: list[Follower] = []
        self.synced = asyncio.Event()
        """Set once both buckets have been replayed."""

    async def start(self) -> None:
        workers, models = await self._buckets()
        # Heartbeats keep the workers' watch busy; silence longer than a TTL means it broke.
        self._followers = [
            Follower(
                workers,
                ">",
                self._on_worker,
                self._on_synced,
                resync=max(self.ttl, 5.0),
                name="registry-workers",
            ),
            Follower(
                models, ">", self._on_model, self._on_synced, resync=_MODELS_RESYNC,
                name="registry-models",
            ),
        ]  # fmt: skip
        for follower in self._followers:
            follower.start()
        self._prober = asyncio.create_task(self._probe(), name="registry-probe")

    async def stop(self) -> None:
        if self._prober is not None:
            await stop_task(self._prober)
        for follower in self._followers:
            await follower.stop()

    async def _probe(self) -> None:
        """While no news comes, ask the bucket's stream every TTL/8 whether it answers."""
        interval = max(self.ttl / 8, 0.1)
        stream = f"KV_{names.WORKERS_BUCKET}"
        while True:
            await asyncio.sleep(interval)
            if time.time() - self._heard_at < interval:
                continue
            sent = time.time()
            try:
                async with asyncio.timeout(interval * 2):
                    await self._js.stream_info(stream)
            except Exception:  # cut off: the clock of `live_workers` stops
                continue
            self._answered_at = sent

    async def rewatch(self) -> None:
        """After a reconnect: make sure both buckets exist and watch them afresh."""
        await self._buckets()
        for follower in self._followers:
            await follower.restart()

    async def _buckets(self) -> tuple[KeyValue, KeyValue]:
        return (
            await streams.workers_bucket(self._js, self.ttl, self.replicas),
            await streams.models_bucket(self._js, self.replicas),
        )

    def _on_synced(self) -> None:
        if all(f.synced.is_set() for f in self._followers):
            self.synced.set()

    def _on_worker(self, key: str, value: bytes | None) -> None:
        if not value:
            if self._workers.pop(key, None) is not None:
                self._heard_at = time.time()
            return
        with contextlib.suppress(msgspec.DecodeError):
            info = worker_info_decoder.decode(value)
            known = self._workers.get(key)
            if known is None or info.heartbeat_at > known.heartbeat_at:
                self._heard_at = time.time()
            self._workers[key] = info

    def _on_model(self, key: str, value: bytes | None) -> None:
        if not value:
            self._models.pop(key, None)
            return
        with contextlib.suppress(msgspec.DecodeError):
            self._models[key] = model_info_decoder.decode(value)

    def live_workers(self) -> list[WorkerInfo]:
        """Heartbeats younger than a TTL, not counting (up to one TTL) the time the view has
        been cut off: neither news nor an answer from the bucket. A healthy bucket answers
        every TTL/8, so a worker that died ages out within ~1.1 TTL."""
        now = time.time()
        cut_off = now - max(self._heard_at, self._answered_at)
        oldest = now - self.ttl - min(cut_off, self.ttl)
        return [w for w in self._workers.values() if w.heartbeat_at >= oldest]

    def workers_for(self, model: str) -> list[WorkerInfo]:
        """Live workers that take jobs of `model` now: not draining, circuit not open."""
        return [
            w
            for w in self.live_workers()
            if model in w.models and not w.draining and w.circuit != "open"
        ]

    def capacity_for(self, model: str) -> int:
        """Job slots of the live workers taking `model`'s jobs now."""
        return sum(w.capacity for w in self.workers_for(model))

    def live_models(self) -> dict[str, list[WorkerInfo]]:
        served: dict[str, list[WorkerInfo]] = {}
        for worker in self.live_workers():
            if worker.draining:
                continue
            for model in worker.models:
                served.setdefault(model, []).append(worker)
        return served

    def known(self, model: str) -> bool:
        return self.model_info(model) is not None or bool(self.workers_for(model))

    def model_info(self, model: str) -> ModelInfo | None:
        try:
            return self._models.get(names.model_kv_key(model))
        except ValueError:  # an empty name
            return None
