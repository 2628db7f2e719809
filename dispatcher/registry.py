"""The api's live view of the worker registry (LLMQ_WORKERS) and model catalog (LLMQ_MODELS).

Both buckets are watched, so answering `/v1/models` or "is anyone serving this model?" is a
dict lookup. A worker counts as live while its last heartbeat is younger than the bucket's
TTL; one that stops cleanly deletes its key, one that dies simply ages out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dispatcher import streams
from schemas.registry import (
    ModelInfo,
    WorkerInfo,
    model_info_decoder,
    worker_info_decoder,
)

log = logging.getLogger(__name__)

_DELETES = ("DEL", "PURGE")


class WorkerRegistry:
    def __init__(self, js: JetStreamContext, ttl: float) -> None:
        self._js = js
        self.ttl = ttl
        self._workers: dict[str, WorkerInfo] = {}
        self._models: dict[str, ModelInfo] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()

    async def start(self) -> None:
        workers = await streams.workers_bucket(self._js, self.ttl)
        models = await streams.models_bucket(self._js)
        self._tasks = [
            asyncio.create_task(self._follow(workers, self._on_worker), name="registry-workers"),
            asyncio.create_task(self._follow(models, self._on_model), name="registry-models"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, kv: KeyValue, apply: object) -> None:
        """Watch a bucket forever; a broken watch is re-opened (it replays current values)."""
        while True:
            watcher = None
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self.synced.set()
                        continue
                    apply(entry.key, entry.value, entry.operation)  # type: ignore[operator]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registry watch of %s failed: %s", kv._name, exc)
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def _on_worker(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in _DELETES or not value:
            self._workers.pop(key, None)
            return
        with contextlib.suppress(msgspec.DecodeError):
            self._workers[key] = worker_info_decoder.decode(value)

    def _on_model(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in _DELETES or not value:
            self._models.pop(key, None)
            return
        with contextlib.suppress(msgspec.DecodeError):
            info = model_info_decoder.decode(value)
            self._models[info.name] = info

    def live_workers(self) -> list[WorkerInfo]:
        oldest = time.time() - self.ttl
        return [w for w in self._workers.values() if w.heartbeat_at >= oldest]

    def workers_for(self, model: str) -> list[WorkerInfo]:
        """Live workers that take jobs of `model` now: not draining, circuit not open."""
        return [
            w
            for w in self.live_workers()
            if model in w.models and not w.draining and w.circuit != "open"
        ]

    def live_models(self) -> dict[str, list[WorkerInfo]]:
        served: dict[str, list[WorkerInfo]] = {}
        for worker in self.live_workers():
            if worker.draining:
                continue
            for model in worker.models:
                served.setdefault(model, []).append(worker)
        return served

    def known(self, model: str) -> bool:
        return model in self._models or bool(self.workers_for(model))

    def model_info(self, model: str) -> ModelInfo | None:
        return self._models.get(model)
