"""Room in the stores a new durable job, batch or file will write, checked before it is
accepted: a store fuller than `store_high_water` of its byte bound refuses new work with a
507, so what was accepted before still has room to finish (its results, its record's
updates) and nothing accepted is ever dropped to make room (the stores discard new
messages at their bound, `dispatcher.streams` and `api.batch.stores`)."""

from __future__ import annotations

import time

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


class StoreRoom:
    def __init__(self, js: JetStreamContext, high_water: float) -> None:
        self.js = js
        self.high_water = high_water
        self._fill: dict[str, tuple[float, float]] = {}
        """Stream -> (monotonic time read, bytes held / bytes bound)."""

    async def check(self, *streams: str) -> None:
        """Raise DispatchError 507 `storage_full` when one of `streams` (a bucket's stream is
        `KV_<bucket>`) is past the high-water mark of its bound."""
        for stream in streams:
            if await self.fill(stream) >= self.high_water:
                raise DispatchError(
                    507,
                    f"llmq's store {stream} is full; new work is refused until finished "
                    "records expire or are deleted (see LLMQ_*_MAX_BYTES)",
                    "storage_full",
                )

    async def fill(self, stream: str) -> float:
        """How full `stream` is (0 without a byte bound)."""
        now = time.monotonic()
        known = self._fill.get(stream)
        if known is not None and now - known[0] < FRESH:
            return known[1]
        try:
            info = await self.js.stream_info(stream)
        except Exception:  # NATS away: the write itself will say so, as it always did
            return 0.0
        bound = info.config.max_bytes or -1
        fill = info.state.bytes / bound if bound > 0 else 0.0
        self._fill[stream] = (now, fill)
        return fill
