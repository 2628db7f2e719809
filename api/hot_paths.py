"""`HotPaths`: the ASGI app uvicorn serves while the Starlette gate is open
(`llmq._fast.starlette`; shut, uvicorn serves the FastAPI app itself).
`POST /v1/chat/completions`, `/v1/completions`, `/v1/responses` and `/v1/messages` go straight
to their endpoint behind one exception boundary; every other request goes to the FastAPI app
and its middleware stack, as before.

Why: every layer of that stack (FastAPI's and Starlette's `__call__`, ServerErrorMiddleware,
FastAPI's exception-telemetry and body-limit middlewares, ExceptionMiddleware,
AsyncExitStackMiddleware, the router, `request_response` and its exception wrapper) is one
more coroutine per request and one more wrapper around `send` for every message, SSE chunks
included, and one more suspended frame per open stream (docs/benchmarks.md).

What each layer does for these requests, and what stands in for it here:
- FastAPI `__call__`: sets `root_path` (the app sets none) and runs FastAPI's native
  OpenTelemetry when global providers are configured: such requests go to the app.
- ServerErrorMiddleware: an exception no handler takes gets the app's `Exception` handler's
  500, then goes on to uvicorn (which logs it): the same here.
- ExceptionTelemetryMiddleware acts only under that native telemetry; AppBodyLimitMiddleware
  only with `FastAPI(max_body_size=...)` (llmq's own 413 is `read_body`'s, in the endpoint):
  with one, the shortcut is off.
- CORSMiddleware (`LLMQ_CORS_ORIGINS`): when the app has it, the hot routes get their own
  instance with the app's options (it adds `Vary: Origin` to every response, the CORS headers
  to a request with an allowed `Origin`; preflight OPTIONS goes to the app). ConsoleHeaders
  acts on `/ui` only.
- ExceptionMiddleware and `request_response`: the app's exception handlers, by status for an
  HTTPException, else by class along the MRO: the same handlers (`api/errors.py`), looked up
  the same way, before the response starts. An exception after it started goes to uvicorn,
  as today (nothing can be sent then).
- AsyncExitStackMiddleware closes uploaded form files: these endpoints read JSON.
- The router: the route it would pick for `POST path`, found once; any other method, a
  trailing slash or a mounted prefix goes to the app (405, redirect, 404 as before).
Request metrics, the request log and the tracing spans come from the serving path (its
observers), not from middleware; OpenAI's response headers (`x-request-id` when the serving
path set none, `openai-processing-ms`, `openai-version`: `api/response_headers`) are added
here, for every request, hot or not. Any other middleware on the app turns the shortcut
off, so a middleware added later is never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast, get_type_hints

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmq._fast.starlette import EXCEPTION_HANDLERS, is_async_callable, native_telemetry
from llmq.api.console.app import ConsoleHeaders
from llmq.api.response_headers import openai_headers

HOT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]
_KNOWN = (CORSMiddleware, ConsoleHeaders)
"""The app's middleware the shortcut stands in for (see above)."""


class HotPaths:
    """The app uvicorn serves: the hot routes' POSTs straight to their endpoints, the rest to
    `app`. Its `state` is the app's (`ApiServer` and the tests read it)."""

    def __init__(self, app: FastAPI, paths: tuple[str, ...] = HOT_PATHS) -> None:
        self.app = app
        self.state = app.state  # what uvicorn's callers and the tests read, as on the app
        self._fallback: Handler | None = None
        self._by_status: dict[int, Handler] = {}
        self._by_class: dict[type, Handler] = {}
        for key, any_handler in app.exception_handlers.items():  # split as FastAPI's stack does
            handler = cast(Handler, any_handler)  # async: checked in _allowed
            if key in (500, Exception):
                self._fallback = handler
            elif isinstance(key, int):
                self._by_status[key] = handler
            else:
                self._by_class[key] = handler
        self._scope_handlers = (self._by_class, self._by_status)
        self._entry: ASGIApp = self._serve
        for m in app.user_middleware:
            if m.cls is CORSMiddleware:  # the same options, around the hot routes only
                options: dict[str, Any] = dict(m.kwargs)
                self._entry = CORSMiddleware(self._serve, **options)
        self._telemetry = native_telemetry(app)
        self._traced = self._otel_on()
        self.routes: dict[str, tuple[APIRoute, Endpoint]] = (
            self._routes(paths) if self._allowed() else {}
        )

    def _allowed(self) -> bool:
        """Whether every layer the shortcut skips is one it knows to stand in for."""
        handlers = [self._fallback, *self._by_status.values(), *self._by_class.values()]
        return (
            not self.app.root_path
            and getattr(self.app, "max_body_size", None) is None
            and not self.app.debug
            and all(m.cls in _KNOWN and not m.args for m in self.app.user_middleware)
            and all(h is not None and is_async_callable(h) for h in handlers)
        )

    def _routes(self, paths: tuple[str, ...]) -> dict[str, tuple[APIRoute, Endpoint]]:
        """For each path, the route the app's router picks for a POST, if its endpoint takes
        the `Request` only and returns a `Response` (so FastAPI's handler adds nothing)."""
        found: dict[str, tuple[APIRoute, Endpoint]] = {}
        for path in paths:
            probe = {"type": "http", "path": path, "root_path": "", "method": "POST"}
            route = next(
                (r for r in self.app.router.routes if r.matches(probe)[0] is Match.FULL), None
            )
            if isinstance(route, APIRoute) and _request_only(route):
                found[path] = (route, route.endpoint)
        return found

    def _otel_on(self) -> bool:
        """Whether FastAPI's native OpenTelemetry records requests (global providers set).
        Asked at construction and when the lifespan has started (where FastAPI's own
        auto-configuration runs), not per request: the check costs ~3 µs, and OpenTelemetry
        sets a global provider once."""
        return self._telemetry is not None and bool(self._telemetry.enabled())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = openai_headers(send)  # on every answer, the app's too
        if scope["type"] == "http" and scope["method"] == "POST":
            if scope["path"] in self.routes and not (self._traced or scope.get("root_path")):
                await self._entry(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def started(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._traced = self._otel_on()
            await send(message)

        return started

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        route, endpoint = self.routes[scope["path"]]
        scope["app"] = self.app  # what the app, its router and its route put in the scope
        scope["router"] = self.app.router
        scope["route"] = route
        scope["endpoint"] = endpoint
        scope["path_params"] = {}
        scope[EXCEPTION_HANDLERS] = self._scope_handlers
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            try:
                handler = self._handler(exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
            except Exception as error:  # ServerErrorMiddleware: the 500, then uvicorn's log
                assert self._fallback is not None
                await (await self._fallback(Request(scope), error))(scope, receive, send)
                raise
            await response(scope, receive, send)
            exc.__traceback__ = None  # as Starlette: a reused exception keeps no frames
            return
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        if isinstance(exc, HTTPException) and exc.status_code in self._by_status:
            return self._by_status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self._by_class:
                return self._by_class[cls]
        return None


def _request_only(route: APIRoute) -> bool:
    dependant = route.dependant
    params = (
        dependant.dependencies,
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    if any(params) or dependant.request_param_name is None:
        return False
    if not is_async_callable(route.endpoint):
        return False
    try:
        returns = get_type_hints(route.endpoint).get("return")
    except (NameError, TypeError):
        return False
    return isinstance(returns, type) and issubclass(returns, Response)
