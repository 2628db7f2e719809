"""The Starlette/FastAPI gate: the api's hot routes served ahead of the middleware stack.

`llmq.api.hot_paths.HotPaths` stands in for the layers of FastAPI's and Starlette's stack it
skips, and `llmq.api.routes.plain.PlainRoute` serves a route as a plain Starlette endpoint;
both are on only while `GATE` is open (`llmq._fast` says how the gate works). What they need
of the libraries' private parts is here: FastAPI's native-telemetry switch and the scope key
under which Starlette's exception middleware hands its handlers to `request_response`.
Shut, uvicorn serves the FastAPI app itself and every route is an ordinary `APIRoute`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from llmq._fast import Gate

GATE = Gate("Starlette", {"starlette": ("1.10", "1.11"), "fastapi": ("0.165", "0.166")})
"""Tested with Starlette 1.10 and FastAPI 0.165."""

EXCEPTION_HANDLERS = "starlette.exception_handlers"
"""The scope key Starlette's `ExceptionMiddleware` sets: (handlers by class, by status)."""


def native_telemetry(app: Any) -> Any:
    """FastAPI's own OpenTelemetry hook of `app` (None in a version without one)."""
    return getattr(app, "_native_telemetry", None)


def is_async_callable(obj: Any) -> bool:
    """An `async def` function, or an object whose `__call__` is one (through partials)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(obj.__call__)
    )
