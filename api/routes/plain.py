"""`PlainRoute`: a FastAPI route served as a plain Starlette endpoint.

FastAPI's per-request machinery (dependency solving, body and content-type handling,
endpoint context for error messages, response validation) costs tens of µs per request even
for an endpoint that takes only the `Request` and returns a `Response`, and it showed in the
api's profile on the hot routes (docs/benchmarks.md). A `PlainRoute` keeps everything else:
it is an `APIRoute`, so `/openapi.json` documents it; routing, middleware (CORS, the
console's headers) and the exception handlers (OpenAI-shaped errors) are the app's own. Its
endpoint must be `async def endpoint(request: Request) -> Response` with no dependencies.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class PlainRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        endpoint: Handler = self.endpoint
        assert not self.dependant.dependencies, "a PlainRoute takes the Request only"
        return endpoint
