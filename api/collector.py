"""Python's garbage collector for a long-running api (`LLMQ_GC_FREEZE_THRESHOLD`).

Python's full collections walk every tracked object, the start-up heap (FastAPI, pydantic,
the OpenAPI document) included, and the requests that arrive meanwhile wait: that is most
of the api's p99 at concurrency 32 (docs/benchmarks.md). After start-up the heap is frozen
(`gc.freeze`: never scanned again) and the youngest generation is collected every
`threshold` allocations instead of 700. Off by default.
"""

from __future__ import annotations

import gc
from collections.abc import Callable


def freeze_after_start(threshold: int) -> Callable[[], None]:
    """Freeze the heap as it is now and set the youngest generation's threshold (0: leave
    the collector as it is); returns what puts it back as it was (at shutdown)."""
    if threshold <= 0:
        return lambda: None
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, before[1], before[2])

    def undo() -> None:
        gc.unfreeze()
        gc.set_threshold(*before)

    return undo
