"""One way every llmq process runs its event loop: uvloop when installed, else asyncio.

uvloop's loop, transports and timers cost less CPU per request than asyncio's;
the api gets it through uvicorn (`api.server.uvicorn_config`), the worker and the long-running
commands (`llmq top`, the tenants commands) through `run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
    uvloop = None  # type: ignore[assignment]

AVAILABLE = uvloop is not None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop when it is installed."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)
