"""`PlainRoute`: a FastAPI route served as a plain Starlette endpoint (while the Starlette
gate is open, `llmq._fast.starlette`; shut, an ordinary `APIRoute`).

FastAPI's per-request machinery (dependency solving, body and content-type handling,
endpoint context for error messages, two `AsyncExitStack`s per request, response
validation) costs tens of µs and a few KB per request even for an endpoint that takes only
the `Request` and returns a `Response`, and it showed in the api's profile on the hot routes
(docs/benchmarks.md). A `PlainRoute` is served by Starlette's own `request_response`: the
`Request` in, the endpoint's `Response` out, exceptions to the app's handlers (so the same
OpenAI-shaped errors). It stays an `APIRoute`, so `/openapi.json` documents it. Add it to the
app's routes directly (`app.router.routes`): `include_router` would wrap it in FastAPI's
handler again. Its endpoint must be `async def endpoint(request: Request) -> Response`, with
no dependencies. Under uvicorn, `api/hot_paths.HotPaths` calls the hot ones' endpoints ahead
of the app's middleware stack too; this route is what the app itself (and its router, for
the 405 of another method) serves.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from llmq._fast import starlette as fast_starlette

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class PlainRoute(APIRoute):
    def __init__(self, path: str, endpoint: Handler, **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        assert not self.dependant.dependencies, "a PlainRoute takes the Request only"
        if fast_starlette.GATE.open:
            self.app = request_response(endpoint)

    def get_route_handler(self) -> Any:
        if not fast_starlette.GATE.open:  # an ordinary APIRoute
            return super().get_route_handler()
        endpoint: Handler = self.endpoint
        return endpoint
