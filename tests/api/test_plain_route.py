"""`PlainRoute`: the hot routes skip FastAPI's request handler but keep the app's routing,
exception handlers and OpenAPI document."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from llmq.api.errors import ApiError, install_error_handlers
from llmq.api.routes.plain import PlainRoute

pytestmark = pytest.mark.usefixtures("fast_paths_on")  # tests of the shortcuts themselves


async def _echo(request: Request) -> Response:
    body = await request.body()
    if body == b"bad":
        raise ApiError(400, "bad body", "invalid_body", type="invalid_request_error")
    fastapi_stack = "fastapi_inner_astack" in request.scope  # FastAPI's handler was there
    headers = {"x-seen": request.url.path, "x-fastapi": str(fastapi_stack)}
    return Response(body, media_type="application/json", headers=headers)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(prefix="/v1", route_class=PlainRoute)
    router.post("/echo")(_echo)
    app.router.routes.extend(router.routes)
    return app


async def test_served_by_the_endpoint_itself_with_the_apps_error_handlers() -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        ok = await client.post("/v1/echo", content=b'{"a": 1}')
        bad = await client.post("/v1/echo", content=b"bad")
        missing = await client.get("/v1/echo")
    assert ok.status_code == 200 and ok.content == b'{"a": 1}'
    assert ok.headers["x-seen"] == "/v1/echo" and ok.headers["x-fastapi"] == "False"
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_body"
    assert missing.status_code == 405


def test_the_handler_is_the_endpoint_and_the_route_stays_documented() -> None:
    route = PlainRoute("/v1/echo", _echo, methods=["POST"])
    assert route.get_route_handler() is _echo  # no FastAPI request handler in between
    assert "post" in _app().openapi()["paths"]["/v1/echo"]


def test_an_endpoint_with_dependencies_is_refused() -> None:
    async def needs(request: Request, extra: str = Depends(lambda: "x")) -> Response:
        return Response(extra)

    with pytest.raises(AssertionError, match="Request only"):
        PlainRoute("/v1/needs", needs, methods=["POST"])
