"""Room in the stores a new durable job, batch or file will write, checked before it is
accepted: a store fuller than `store_high_water` of its byte bound first evicts its oldest
finished records (`api.batch.eviction`), and refuses the new work with a 507 only when it is
still that full, so what was accepted before still has room to finish (its results, its
record's updates) and nothing queued or running is ever dropped to make room (the stores
discard new messages at their bound, `dispatcher.streams` and `api.batch.stores`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from llmq.dispatcher.dispatch import DispatchError
from llmq.schemas import names

ASYNC_JOB_STORES = (
    names.BATCH_STREAM,
    names.OUTCOMES_STREAM,
    f"KV_{names.ASYNC_JOBS_BUCKET}",
    f"KV_{names.RESULTS_BUCKET}",
)
"""What a new async job writes: its queue entry, its outcome, its record and its result."""
BATCH_STORES = (
    names.BATCH_STREAM,
    names.OUTCOMES_STREAM,
    f"KV_{names.BATCHES_BUCKET}",
    f"KV_{names.RESULTS_BUCKET}",
)
FILE_STORES = (f"OBJ_{names.FILES_OBJECT_STORE}", f"KV_{names.FILE_META_BUCKET}")

FRESH = 1.0
"""Seconds a store's fill is reused before it is asked again (one stream-info per store per
second at most, whatever the request rate)."""
EVICT_WAIT = 2.0
"""Seconds a request waits for finished records to be evicted before it gets a 507."""

MakeRoom = Callable[[str, float], Awaitable[None]]
"""(stream, seconds): evict finished records from a store (`Evictor.make_room`)."""


async def fill_of(js: JetStreamContext, stream: str) -> float:
    """How full `stream` is now (0 without a byte bound, or while NATS is away: the write
    itself will say so, as it always did)."""
    try:
        info = await js.stream_info(stream)
    except Exception:
        return 0.0
    bound = info.config.max_bytes or -1
    return info.state.bytes / bound if bound > 0 else 0.0


class StoreRoom:
    def __init__(
        self, js: JetStreamContext, high_water: float, make_room: MakeRoom | None = None
    ) -> None:
        self.js = js
        self.high_water = high_water
        self.make_room = make_room
        self._fill: dict[str, tuple[float, float]] = {}
        """Stream -> (monotonic time read, bytes held / bytes bound)."""

    async def check(self, *streams: str) -> None:
        """Raise DispatchError 507 `storage_full` when one of `streams` (a bucket's stream is
        `KV_<bucket>`) is past the high-water mark of its bound after evicting what it may."""
        for stream in streams:
            if await self.fill(stream) < self.high_water:
                continue
            if self.make_room is not None:
                await self.make_room(stream, EVICT_WAIT)
                self._fill.pop(stream, None)
            if await self.fill(stream) >= self.high_water:
                raise DispatchError(
                    507,
                    f"llmq's store {stream} is full of queued and running work and files; "
                    "new work is refused until some of it finishes or is deleted "
                    "(see LLMQ_*_MAX_BYTES)",
                    "storage_full",
                )

    async def fill(self, stream: str) -> float:
        """How full `stream` is (0 without a byte bound)."""
        now = time.monotonic()
        known = self._fill.get(stream)
        if known is not None and now - known[0] < FRESH:
            return known[1]
        fill = await fill_of(self.js, stream)
        self._fill[stream] = (now, fill)
        return fill
