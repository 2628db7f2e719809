"""`tests.source.parse` holds while garbage with finalizers that parse is collected."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from tests.source import parse

BIG = Path(__file__).resolve().parent / "test_architecture.py"


async def _fails() -> None:
    raise ValueError("never retrieved")


def _tasks_nobody_awaits(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks whose exception nobody reads, in reference cycles: only a collection frees
    them, and then each logs its traceback (which the 3.11 traceback module `ast.parse`s)."""
    for _ in range(50):
        task = loop.create_task(_fails())
        task.cycle = task  # type: ignore[attr-defined]
    loop.run_until_complete(asyncio.sleep(0))


def test_a_collection_during_a_parse_cannot_break_it(caplog: pytest.LogCaptureFixture) -> None:
    """(caplog formats each record, traceback and all, as a real handler does.)"""
    loop = asyncio.new_event_loop()
    threshold = gc.get_threshold()
    gc.set_threshold(100)  # a collection every few hundred allocations: inside every parse
    try:
        for _ in range(3):
            _tasks_nobody_awaits(loop)
            assert parse(BIG).body
        gc.collect()
    finally:
        gc.set_threshold(*threshold)
        loop.close()
    assert "never retrieved" in caplog.text  # the finalizers did log their tracebacks
