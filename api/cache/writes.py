"""Answers on their way to the store, kept off every request's path: an answer that ended
well is queued here and written up to `WRITE_DELAY` later, with every other answer queued
by then, in one pipelined write. Until it is written, this replica serves it from here.
Bounded (`max_bytes`): past it an answer is not stored, as when the store is away.

Measured (docs/benchmarks.md): writing each answer as its request ends puts a write and its
reply (and Valkey's script) beside every request at c=1; a write of 2 ms later lands in the
middle of the next one. Writing together every 20 ms lands one write in one request of many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from llmq.api.cache.store import CacheStore, Entry

log = logging.getLogger(__name__)

WRITE_DELAY = 0.02
"""Seconds the answers wait to be written together (at c=1 a write lands in one request of
many instead of beside every one); sooner when `WRITE_BATCH` of them wait."""
WRITE_BATCH = 64

OnStored = Callable[[str, int, int], None]
"""(model, bytes stored, entries evicted) of each write."""


@dataclass(frozen=True, slots=True)
class Pending:
    scope: str
    digest: str
    entry: Entry
    ttl: float
    model: str
    size: int


class Writes:
    """The queue of one api process."""

    def __init__(self, store: CacheStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.on_stored: OnStored = lambda _model, _written, _evicted: None
        self._queued: dict[tuple[str, str], Pending] = {}
        self._writing: dict[tuple[str, str], Pending] = {}
        self._bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._full: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        """Writes under way (one not started yet included)."""

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    def get(self, scope: str, digest: str) -> Entry | None:
        """An answer queued or being written (so it is served before it lands)."""
        key = (scope, digest)
        pending = self._queued.get(key) or self._writing.get(key)
        return pending.entry if pending is not None else None

    def add(self, scope: str, digest: str, entry: Entry, ttl: float, model: str) -> None:
        size = len(entry.body) + sum(len(frame) for frame in entry.frames)
        if size > self.store.settings.cache_max_entry_bytes:
            return  # served, never stored
        if self._bytes + size > self.max_bytes:
            log.warning("response cache writes fall behind: an answer is not stored")
            return
        key = (scope, digest)
        replaced = self._queued.pop(key, None)
        if replaced is not None:
            self._bytes -= replaced.size
        self._queued[key] = Pending(scope, digest, entry, ttl, model, size)
        self._bytes += size
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._full = loop.create_future()
            task = loop.create_task(self._flush(self._full), name="cache-writes")
            self._flusher = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif len(self._queued) >= WRITE_BATCH and self._full and not self._full.done():
            self._full.set_result(None)

    async def _flush(self, full: asyncio.Future[None]) -> None:
        """`full`: set when `WRITE_BATCH` answers wait (then they go at once)."""
        try:
            await asyncio.wait((full,), timeout=WRITE_DELAY)
        finally:
            self._flusher = None  # what is queued from now on goes in the next write
            full.cancel()
        batch, self._queued = self._queued, {}
        self._writing.update(batch)
        try:
            items = [(p.scope, p.digest, p.entry, p.ttl) for p in batch.values()]
            results = await self.store.put_many(items)
        finally:
            for key, pending in batch.items():
                if self._writing.get(key) is pending:
                    del self._writing[key]
                self._bytes -= pending.size
        for pending, stored in zip(batch.values(), results, strict=True):
            with contextlib.suppress(Exception):
                self.on_stored(pending.model, stored.written, stored.evicted)

    async def drop(self, scope: str, timeout: float) -> None:
        """Forget the scope's queued answers and let the writes under way land (a deleted
        tenant: its entries are purged next)."""
        for key in [key for key in self._queued if key[0] == scope]:
            self._bytes -= self._queued.pop(key).size
        await self.close(timeout)

    async def close(self, timeout: float) -> None:
        """Let the writes under way land."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
