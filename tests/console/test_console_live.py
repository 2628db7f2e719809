"""The overview's live figures (api/console/live.py): the last minute's requests, errors and
time to first token, and its requests per 5 s for the chart, oldest first."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmq.api.console.live import LiveStats
from llmq.api.request_record import RequestRecord


def test_figures_and_history_of_the_last_minute() -> None:
    clock = [1000.0]
    stats = LiveStats(clock=lambda: clock[0])
    seen: list[tuple[float, int, float | None]] = [
        (0.0, 200, 0.02), (1.0, 200, 0.04), (2.0, 429, None),  # > a minute ago by the end
        (50.0, 200, 0.01), (52.0, 503, None), (58.0, 200, 0.03), (63.0, 404, None),
    ]  # fmt: skip
    for at, status, ttft in seen:
        clock[0] = 1000.0 + at
        stats.observe(RequestRecord(job_id=f"j{at}", route="chat", status=status, ttft=ttft))
    clock[0] = 1000.0 + 64.0
    before = time.time()
    got: dict[str, Any] = stats.figures()
    assert (got["requests"], got["client_errors"], got["server_errors"]) == (4, 1, 1)
    assert (got["ttft_p50"], got["ttft_p99"]) == (0.01, 0.03)
    history = got["history"]
    assert len(history) == 12 and [b["at"] for b in history] == sorted(b["at"] for b in history)
    assert history[-1]["at"] == pytest.approx(before, abs=1.0)
    # ends 64 s: the last bar holds 59..64 s (63 s: a 404), the one before 54..59 s (58 s)
    assert history[-1] == {**history[-1], "ok": 0, "client_errors": 1, "server_errors": 0}
    assert history[-2] == {**history[-2], "ok": 1, "client_errors": 0, "server_errors": 0}
    assert history[-3] == {**history[-3], "ok": 1, "client_errors": 0, "server_errors": 1}
    assert sum(b["ok"] + b["client_errors"] + b["server_errors"] for b in history) == 4
