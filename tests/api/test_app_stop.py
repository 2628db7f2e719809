"""The api's shutdown is bounded part by part (`api.app.StopStack`): a part whose stop hangs,
even one that swallows its cancellation, is named in the log and the others still stop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from llmq.api import app as api_app


async def test_a_hanging_part_does_not_hold_the_shutdown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(api_app, "STOP_LIMIT", 0.3)
    stopped: list[str] = []
    release = asyncio.Event()

    async def closes() -> None:
        stopped.append("closes")

    async def hangs() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:  # swallowed: the worst case
                continue

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=api_app.__name__):
        async with api_app.StopStack() as undo:
            undo.push_async_callback(closes)
            undo.push_async_callback(hangs)
    assert time.monotonic() - started < 5
    assert stopped == ["closes"]
    assert any("hangs" in r.getMessage() and "outlasted" in r.getMessage() for r in caplog.records)
    release.set()
    await asyncio.sleep(0.01)  # the hanging part ends now


async def test_a_failing_stop_still_raises() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        async with api_app.StopStack() as undo:
            undo.push_async_callback(fails)
