"""W3C trace context from the job to the upstream call.

The api copies the client's `traceparent` header into the job's NATS headers; the job
runner puts it in `TRACEPARENT` for the task that runs the job, and the HTTP backends'
client adds it to every upstream request made from that task (an httpx request hook), so
one trace spans client, api, worker and model server.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

import httpx

TRACEPARENT: ContextVar[str | None] = ContextVar("llmq_traceparent", default=None)

_VALID = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is well-formed (version-traceid-parentid-flags), else None."""
    if value and _VALID.match(value.strip().lower()):
        return value.strip().lower()
    return None


async def add_traceparent(request: httpx.Request) -> None:
    """httpx `request` event hook: pass the running job's trace context upstream."""
    value = TRACEPARENT.get()
    if value and "traceparent" not in request.headers:
        request.headers["traceparent"] = value
