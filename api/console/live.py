"""The overview's live figures: requests/s, errors and time to first token over the last
minute, from the same `RequestRecord`s the metrics see (a serving observer). Per replica:
behind a load balancer each api shows its own traffic."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmq.api.request_record import RequestRecord

WINDOW = 60.0
"""Seconds the figures cover."""
BUCKET = 5.0
"""Seconds per bar of the overview's request chart."""
MAX_RECORDS = 100_000
"""Bounds the memory a burst can take; older records drop first."""


@dataclass(slots=True)
class _Seen:
    at: float
    status: int
    ttft: float | None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class LiveStats:
    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._seen: deque[_Seen] = deque(maxlen=MAX_RECORDS)

    def observe(self, record: RequestRecord) -> None:
        self._seen.append(_Seen(self._clock(), record.status, record.ttft))

    def figures(self) -> dict[str, object]:
        """Requests/s, 4xx and 5xx counts and p50/p99 TTFT (seconds) over the window, and
        the requests per `BUCKET` seconds (`history`) for the overview's chart."""
        now = self._clock()
        cutoff = now - self.window
        while self._seen and self._seen[0].at < cutoff:
            self._seen.popleft()
        seen = list(self._seen)
        ttfts = sorted(s.ttft for s in seen if s.ttft is not None)
        return {
            "window_seconds": self.window,
            "requests": len(seen),
            "requests_per_second": round(len(seen) / self.window, 3),
            "client_errors": sum(1 for s in seen if 400 <= s.status < 500),
            "server_errors": sum(1 for s in seen if s.status >= 500),
            "ttft_p50": _percentile(ttfts, 0.5),
            "ttft_p99": _percentile(ttfts, 0.99),
            "history": self._history(seen, now),
        }

    def _history(self, seen: list[_Seen], now: float) -> list[dict[str, float | int]]:
        """Oldest first; `at` is when the bucket ended (unix seconds)."""
        buckets = max(1, int(self.window // BUCKET))
        counts = [[0, 0, 0] for _ in range(buckets)]
        for s in seen:
            back = int((now - s.at) // BUCKET)
            if back < buckets:
                kind = 2 if s.status >= 500 else 1 if s.status >= 400 else 0
                counts[buckets - 1 - back][kind] += 1
        wall = time.time()
        return [
            {
                "at": round(wall - (buckets - 1 - i) * BUCKET, 3),
                "ok": ok,
                "client_errors": client,
                "server_errors": server,
            }
            for i, (ok, client, server) in enumerate(counts)
        ]
