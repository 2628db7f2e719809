"""The api's live view of the worker registry (LLMQ_WORKERS) and model catalog (LLMQ_MODELS).

Both buckets are watched, so answering `/v1/models` or "is anyone serving this model?" is a
dict lookup. A worker counts as live while its last heartbeat is younger than the bucket's
TTL; one that stops cleanly deletes its key, one that dies simply ages out.

A view that hears nothing while the bucket does not answer either is cut off (the api
reconnecting, the bucket electing a new leader after a cluster node died), not watching every
worker die. The time it was cut off does not count against the workers' heartbeats, also
after contact is back (up to `CREDIT_TTLS` TTLs): the workers were cut off too and need a
moment to beat again, so a failover is not taken for "no worker". And a watch that went quiet
while the bucket answers (its consumer lived on the node that died) is no reason to age
anyone out: the probe then reads the bucket's current entries itself (see `live_workers`).

The two buckets have a watch each, so a worker's heartbeat can arrive before its models'
catalog entries, which the worker wrote first. A caller that needs an entry (the endpoints a
model serves, when it was first seen) loads it with `load_catalog`: for a model a live worker
serves, an entry not delivered yet is read from the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmq.dispatcher import probes, streams
from llmq.dispatcher.kv import Follower, read_raw
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
CREDIT_TTLS = 3
"""At most this many TTLs of cut-off time are added to a heartbeat's life: a NATS leader
election takes seconds (4-9 s of raft election timeout, then a reconnect), never minutes."""
REPLAY_WAIT = 5.0
"""Seconds one wait for the first replay of both buckets lasts (`replayed`; retried)."""
CATALOG_READ_TIMEOUT = 2.0
"""Seconds a request waits for a catalog entry read from the bucket (`load_catalog`)."""


class WorkerRegistry:
    def __init__(
        self, js: JetStreamContext, ttl: float, replicas: int = 1, create: bool = True
    ) -> None:
        self._js = js
        self.ttl = ttl
        self.replicas = replicas
        self.create = create
        """False: both buckets are looked up, never created (LLMQ_NATS_PROVISION)."""
        self._interval = max(ttl / 8, 0.1)
        """Seconds between probes while the watch is quiet."""
        self._slack = 2 * self._interval
        """A quiet spell up to this long is a healthy one (probes only go out after one
        interval of silence); only the time beyond it counts as cut off."""
        self._contact_at = time.time()
        """When the view last had contact: news from the watch (a new heartbeat or a
        departure), or a probe, sent at this time, that the bucket answered."""
        self._gaps: list[tuple[float, float]] = []
        """Past spells without contact longer than `_slack` (start, end), recent ones only."""
        self._left: dict[str, float] = {}
        """Departures seen on the watch (worker id -> when): a probe's late read of an older
        entry does not bring the worker back."""
        self._prober: asyncio.Task[None] | None = None
        self._workers: dict[str, WorkerInfo] = {}
        self._models: dict[str, ModelInfo] = {}
        """By LLMQ_MODELS key (`names.model_kv_key`)."""
        self._followers: list[Follower] = []
        self._catalog: KeyValue | None = None
        self._reads: dict[str, asyncio.Task[None]] = {}
        """Catalog entries being read from the bucket, by key: one read for many requests."""
        self.synced = asyncio.Event()
        """Set once both buckets have been replayed."""

    async def start(self) -> None:
        workers, models = await self._buckets()
        self._catalog = models
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
                models,
                ">",
                self._on_model,
                self._on_synced,
                resync=_MODELS_RESYNC,
                name="registry-models",
            ),
        ]
        for follower in self._followers:
            follower.start()
        self._prober = asyncio.create_task(self._probe(), name="registry-probe")

    async def replayed(self) -> None:
        """Wait for the first replay of both buckets (at most `REPLAY_WAIT` s): an api that
        starts serving before it would answer 404 for models whose workers beat already."""
        async with asyncio.timeout(REPLAY_WAIT):
            await self.synced.wait()

    async def stop(self) -> None:
        if self._prober is not None:
            await stop_task(self._prober)
        for read in list(self._reads.values()):
            await stop_task(read)
        for follower in self._followers:
            await follower.stop()

    async def _probe(self) -> None:
        """While no news comes, read the workers' bucket every TTL/8: its current entries
        (what a quiet or broken watch did not deliver), or no answer (cut off)."""
        while True:
            await asyncio.sleep(self._interval)
            if time.time() - self._contact_at < self._interval:
                continue
            sent = time.time()
            try:
                values = await probes.bucket_values(
                    self._js, names.WORKERS_BUCKET, self._interval * 2
                )
            except Exception:  # cut off: the workers' clocks stop (`live_workers`)
                continue
            for value in values:
                self._on_entry(value, sent)
            self._contact(sent)

    async def rewatch(self) -> None:
        """After a reconnect: make sure both buckets exist and watch them afresh."""
        _workers, self._catalog = await self._buckets()
        for follower in self._followers:
            await follower.restart()

    async def _buckets(self) -> tuple[KeyValue, KeyValue]:
        return (
            await streams.workers_bucket(self._js, self.ttl, self.replicas, self.create),
            await streams.models_bucket(self._js, self.replicas, self.create),
        )

    def _on_synced(self) -> None:
        if all(f.synced.is_set() for f in self._followers):
            self.synced.set()

    def _on_worker(self, key: str, value: bytes | None) -> None:
        now = time.time()
        if not value:
            self._left[key] = now
            if self._workers.pop(key, None) is not None:
                self._contact(now)
            return
        self._on_entry(value, now)

    def _on_entry(self, value: bytes, now: float) -> None:
        """A worker's entry, from the watch or read by a probe: a newer heartbeat is news."""
        with contextlib.suppress(msgspec.DecodeError):
            info = worker_info_decoder.decode(value)
            known = self._workers.get(info.id)
            if known is not None and info.heartbeat_at < known.heartbeat_at:
                return  # a probe's read older than what the watch delivered
            if known is None and info.heartbeat_at <= self._left.get(info.id, 0.0):
                return  # it left after this beat
            if known is None or info.heartbeat_at > known.heartbeat_at:
                self._contact(now)
            self._workers[info.id] = info

    def _contact(self, at: float) -> None:
        """Contact with the bucket at `at`: a silence before it longer than a healthy one
        was a cut-off, remembered so the workers' clocks stay stopped for it."""
        last = self._contact_at
        if at <= last:
            return
        if at - last > self._slack:
            self._gaps.append((last + self._slack, at))
            horizon = at - self.ttl * (CREDIT_TTLS + 1)
            self._gaps = [gap for gap in self._gaps if gap[1] > horizon]
            self._left = {k: t for k, t in self._left.items() if t > horizon}
        self._contact_at = at

    def _credit(self, since: float, now: float) -> float:
        """Seconds after `since` the view was cut off (past spells and the current one),
        at most `CREDIT_TTLS` TTLs."""
        if not self._gaps and now <= self._contact_at + self._slack:
            return 0.0  # never cut off, and in touch now: the common case, asked per request
        spells = [*self._gaps, (self._contact_at + self._slack, now)]
        cut = sum(max(0.0, end - max(start, since)) for start, end in spells)
        return min(cut, CREDIT_TTLS * self.ttl)

    def _on_model(self, key: str, value: bytes | None) -> None:
        if not value:
            self._models.pop(key, None)
            return
        with contextlib.suppress(msgspec.DecodeError):
            self._models[key] = model_info_decoder.decode(value)

    def live_workers(self) -> list[WorkerInfo]:
        """Heartbeats younger than a TTL, not counting the time the view was cut off since
        (neither news nor an answer from the bucket; up to `CREDIT_TTLS` TTLs). A healthy
        bucket answers every TTL/8, so a worker that died ages out within ~1.25 TTL."""
        now = time.time()
        return [
            w
            for w in self._workers.values()
            if now - w.heartbeat_at <= self.ttl + self._credit(w.heartbeat_at, now)
        ]

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

    async def load_catalog(self, models: Iterable[str]) -> None:
        """Make sure the catalog entries of those of `models` that a live worker serves are
        here: a worker writes its entries before its first heartbeat, so one its heartbeat
        came without (the models' watch lags) is read from the bucket. Other names cost no
        read (a client's made-up model is not a request to NATS); a read that fails or takes
        over `CATALOG_READ_TIMEOUT` leaves the entry missing."""
        missing = [m for m in models if self.model_info(m) is None and self.workers_for(m)]
        if missing and self._catalog is not None:
            reads = [self._read_entry(self._catalog, names.model_kv_key(m)) for m in missing]
            await asyncio.gather(*reads, return_exceptions=True)  # one stopped: left missing

    def _read_entry(self, catalog: KeyValue, key: str) -> asyncio.Future[None]:
        """The read of `key`'s catalog entry, shared by every caller waiting for it."""
        task = self._reads.get(key)
        if task is None:
            task = asyncio.create_task(self._read(catalog, key), name="registry-read")
            self._reads[key] = task
            task.add_done_callback(lambda _: self._reads.pop(key, None))
        return asyncio.shield(task)

    async def _read(self, catalog: KeyValue, key: str) -> None:
        try:
            async with asyncio.timeout(CATALOG_READ_TIMEOUT):
                value = await read_raw(catalog, key)
        except Exception as exc:  # NATS away or slow: the entry stays missing
            log.debug("reading catalog entry %s failed: %r", key, exc)
            return
        if value and key not in self._models:  # the watch may have delivered it meanwhile
            self._on_model(key, value)

    def model_info(self, model: str) -> ModelInfo | None:
        try:
            return self._models.get(names.model_kv_key(model))
        except ValueError:  # an empty name
            return None
