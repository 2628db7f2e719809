"""What queue-aware admission adds to a request's path: the calls `api/engine/serving.py` makes per
request (`Router.chain`, `over_queue_wait`, `admit`), against 200 models' estimates. The
estimates themselves are refreshed in the background (dispatcher/queue_estimate.py), never
on the request's path, so this is all a request pays.

    .venv/bin/python bench/admission.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmq.api.engine.model_chain import Router
from llmq.dispatcher.queue_estimate import QueueEstimate

CALLS = 200_000


class _Table:
    """The two model-table lookups the router makes (a dict read each in the real table)."""

    def max_queue_wait_for(self, model: str) -> float | None:
        return 5.0

    def fallbacks_for(self, model: str) -> list[str]:
        return []


def main() -> None:
    models = {
        f"m{i}": QueueEstimate(f"m{i}", pending=3, free_slots=1, rate=2.0, wait=1.5)
        for i in range(200)
    }

    def wait_for(model: str) -> float | None:
        state = models.get(model)
        return state.wait if state is not None else 0.0

    router = Router(_Table(), None, wait_for)  # type: ignore[arg-type]
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("chain", lambda: router.chain("m7")),
        ("over_queue_wait", lambda: router.over_queue_wait("m7")),
        ("admit, admitted", lambda: router.admit("m7", 30.0)),
        ("admit, refused (builds the 429)", lambda: router.admit("m7", 0.5)),
    ]
    for label, call in cases:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(CALLS):
                call()
            runs.append((time.perf_counter() - started) / CALLS * 1e6)
        print(f"{label:34} {statistics.median(runs):6.2f} µs per call")


if __name__ == "__main__":
    main()
