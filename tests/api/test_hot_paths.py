"""`HotPaths` (api/hot_paths.py): the hot routes skip the middleware stack and answer exactly
as the full app does, errors included; whatever a skipped layer would act on (another method,
CORS with an `Origin`, a root path, FastAPI's own telemetry, an unknown middleware) still
goes through the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import APIRouter, FastAPI, Request
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from llmq.api.errors import ApiError, install_error_handlers
from llmq.api.hot_paths import HotPaths
from llmq.api.routes.plain import PlainRoute
from llmq.api.server import uvicorn_config
from llmq.api.startup import StartGate
from llmq.schemas.admission import Refusal
from llmq.schemas.settings import Settings
from tests.spec import assert_valid
from tests.stack import unique, wait_for
from tests.worker.test_metrics import value

pytestmark = pytest.mark.usefixtures("fast_paths_on")  # tests of the shortcuts themselves

_FAILURES: dict[bytes, Exception] = {
    b"api": ApiError(429, "slow down", "rate_limited", headers={"retry-after": "3"}),
    b"refusal": Refusal(403, "not yours", "model_not_allowed", param="model"),
    b"http": HTTPException(404, "gone"),
    b"utf8": UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
    b"queue": NatsTimeoutError(),
    b"timeout": TimeoutError(),
}


class StackSpy:
    """Records the requests that reach the app's middleware stack."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = app.middleware_stack or app.build_middleware_stack()
        self.seen: list[tuple[str, str]] = []
        app.middleware_stack = self  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.inner(scope, receive, send)


async def _endpoint(request: Request) -> Response:
    body = await request.body()
    if body in _FAILURES:
        raise _FAILURES[body]
    if body == b"crash":
        raise RuntimeError("a bug")
    astack = "fastapi_middleware_astack" in request.scope  # FastAPI's stack ran
    headers = {"x-path": request.url.path, "x-stack": str(astack)}
    return Response(body, media_type="application/json", headers=headers)


def _app(**options: Any) -> FastAPI:
    app = FastAPI(**options)
    install_error_handlers(app)
    hot = APIRouter(prefix="/v1", route_class=PlainRoute)
    hot.post("/chat/completions")(_endpoint)
    app.router.routes.extend(hot.routes)
    return app


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://api")


async def _both(app: FastAPI, method: str, path: str, **kw: Any) -> list[httpx.Response]:
    """The same request through `HotPaths` and through the app alone."""
    out = []
    for target in (HotPaths(app), app):
        async with _client(target) as client:
            out.append(await client.request(method, path, **kw))
    return out


OPENAI_HEADERS = {"x-request-id", "openai-processing-ms", "openai-version"}
"""What `HotPaths` adds to every answer, hot or not (`api/response_headers`)."""


def _same(hot: httpx.Response, full: httpx.Response) -> None:
    assert (hot.status_code, hot.content) == (full.status_code, full.content)
    assert OPENAI_HEADERS <= set(hot.headers)
    assert {k: v for k, v in hot.headers.items() if k not in OPENAI_HEADERS} == dict(full.headers)


async def test_a_hot_post_skips_the_stack_and_answers_the_same() -> None:
    app = _app()
    hot, full = await _both(app, "POST", "/v1/chat/completions", content=b'{"a": 1}')
    assert hot.status_code == 200 and hot.content == b'{"a": 1}'
    assert hot.headers["x-stack"] == "False" and full.headers["x-stack"] == "True"
    assert hot.headers["x-path"] == full.headers["x-path"] == "/v1/chat/completions"


@pytest.mark.parametrize("body", [*_FAILURES, b"crash"])
async def test_errors_get_the_apps_own_handlers(body: bytes) -> None:
    hot, full = await _both(_app(), "POST", "/v1/chat/completions", content=body)
    _same(hot, full)
    assert hot.status_code >= 400 and set(hot.json()["error"]) >= {"message", "type", "code"}
    assert_valid("ErrorResponse", hot.json())


async def test_an_unhandled_error_is_a_500_and_still_reaches_the_server() -> None:
    """As ServerErrorMiddleware: the 500 is sent, then the exception goes on (uvicorn logs it)."""
    for target in (HotPaths(_app()), _app()):
        transport = httpx.ASGITransport(app=target)  # raises what the app raised
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            with pytest.raises(RuntimeError, match="a bug"):
                await client.post("/v1/chat/completions", content=b"crash")


async def test_a_handler_that_fails_gets_the_500_too() -> None:
    async def failing(_request: Request, exc: Exception) -> Response:
        raise RuntimeError("the handler broke")

    app = _app()
    app.add_exception_handler(LookupError, failing)
    _FAILURES[b"lookup"] = KeyError("k")
    try:
        hot, full = await _both(app, "POST", "/v1/chat/completions", content=b"lookup")
    finally:
        del _FAILURES[b"lookup"]
    _same(hot, full)
    assert hot.status_code == 500 and hot.json()["error"]["code"] == "internal_error"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_other_methods_and_paths_go_to_the_app(method: str) -> None:
    app = _app()
    spy = StackSpy(app)
    hot, full = await _both(app, method, "/v1/chat/completions")
    _same(hot, full)
    assert hot.status_code == 405 and hot.headers["allow"] == "POST"
    if method != "HEAD":
        assert hot.json()["error"]["code"] == "method_not_allowed"
    assert spy.seen == [(method, "/v1/chat/completions")] * 2
    slash, slash_full = await _both(app, "POST", "/v1/chat/completions/", content=b"{}")
    _same(slash, slash_full)
    assert slash.status_code == 307  # the app's router redirects it
    assert slash.headers["location"] == "http://api/v1/chat/completions"


async def test_cors_requests_go_through_the_apps_cors() -> None:
    def with_cors() -> FastAPI:
        # create_app's CORSMiddleware options
        settings = Settings(cors_origins=["http://console.example"])
        app = _app()
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "x-ratelimit-*"],
        )
        return app

    app = with_cors()
    origin = {"origin": "http://console.example"}
    hot, full = await _both(app, "POST", "/v1/chat/completions", content=b"{}", headers=origin)
    assert (hot.headers["x-stack"], full.headers["x-stack"]) == ("False", "True")
    del hot.headers["x-stack"], full.headers["x-stack"]
    _same(hot, full)
    assert hot.headers["access-control-allow-origin"] == "http://console.example"
    assert "x-request-id" in hot.headers["access-control-expose-headers"]
    preflight = {**origin, "access-control-request-method": "POST"}
    hot, full = await _both(app, "OPTIONS", "/v1/chat/completions", headers=preflight)
    _same(hot, full)
    assert hot.status_code == 200 and "POST" in hot.headers["access-control-allow-methods"]
    refused = {"origin": "http://evil.example"}
    hot, full = await _both(app, "POST", "/v1/chat/completions", content=b"{}", headers=refused)
    del hot.headers["x-stack"], full.headers["x-stack"]
    _same(hot, full)
    assert "access-control-allow-origin" not in hot.headers
    plain, plain_full = await _both(app, "POST", "/v1/chat/completions", content=b"{}")
    assert plain.headers["x-stack"] == "False"  # served hot, with the app's CORS options
    assert plain.headers["vary"] == plain_full.headers["vary"] == "Origin"


async def test_an_unknown_middleware_or_a_root_path_turns_the_shortcut_off() -> None:
    app = _app()
    app.add_middleware(GZipMiddleware)
    assert HotPaths(app).routes == {}
    mounted = _app()
    mounted.root_path = "/gw"
    assert HotPaths(mounted).routes == {}
    app = _app()
    spy = StackSpy(app)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=HotPaths(app), root_path="/gw"), base_url="http://api"
    ) as client:
        resp = await client.post("/gw/v1/chat/completions", content=b"{}")
    assert resp.headers["x-stack"] == "True" and len(spy.seen) == 1


async def test_fastapis_native_telemetry_still_sees_the_hot_routes() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = _app(telemetry={"tracer_provider": provider, "metrics": False, "logs": False})
    hot, _ = await _both(app, "POST", "/v1/chat/completions", content=b"{}")
    assert hot.headers["x-stack"] == "True"
    names = [span.name for span in spans.get_finished_spans()]
    assert names.count("POST /v1/chat/completions") == 2, names


def test_uvicorn_serves_it_behind_its_proxy_headers() -> None:
    config = uvicorn_config(Settings())
    assert isinstance(config.app, StartGate)  # in front while the app starts
    assert isinstance(config.app.app, HotPaths)
    assert set(config.app.app.routes) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
    }
    config.load()
    assert isinstance(config.loaded_app, ProxyHeadersMiddleware)  # forwarded_allow_ips kept
    assert config.loaded_app.app is config.app


@pytest.fixture
async def api(stack) -> AsyncIterator[tuple[Any, str, StackSpy]]:  # type: ignore[no-untyped-def]
    model = unique("hot")
    api = await stack.api(max_body_bytes=4000, cors_origins=["http://console.example"])
    await stack.worker(model=[model], capacity=4)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    yield api, model, StackSpy(api.app.app)


async def test_the_api_serves_its_hot_routes_hot(api) -> None:  # type: ignore[no-untyped-def]
    api, model, spy = api
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    async with client:
        chat = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "one two"}]
        )
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "one two"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        text = await client.completions.create(model=model, prompt="three four")
        resp = await client.responses.create(model=model, input="five six")
    assert chat.headers["x-request-id"]
    assert_valid("CreateChatCompletionResponse", chat.parse().model_dump(exclude_unset=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert_valid("CreateCompletionResponse", text.model_dump(exclude_unset=True))
    assert resp.output_text == "five six"
    assert not [seen for seen in spy.seen if seen[0] == "POST"]  # none went through the stack
    async with httpx.AsyncClient(timeout=30) as http:
        metrics = (await http.get(f"{api.url}/metrics")).text
    requests = "llmq_api_requests_total"
    assert value(metrics, requests, route="chat", model=model, status="200") == 2
    assert value(metrics, requests, route="completion", model=model, status="200") == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b'{"model": "nobody-serves-this", "messages": []}'),
        ("/v1/completions", b'{"model": "m", "prompt": "' + b"x" * 5000 + b'"}'),
        ("/v1/responses", b'{"input": "no model"}'),
    ],
)
async def test_the_apis_refusals_are_the_full_apps(api, path: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    api, _model, spy = api
    answers = []
    for target in (api.app, api.app.app):
        async with _client(target) as client:
            answers.append(await client.post(path, content=body))
    hot, full = answers
    assert hot.status_code == full.status_code and 400 <= hot.status_code < 500
    assert hot.json() == full.json()
    assert_valid("ErrorResponse", hot.json())
    drop = {"content-length", *OPENAI_HEADERS}  # a new job id each time
    assert {k: v for k, v in hot.headers.items() if k not in drop} == {
        k: v for k, v in full.headers.items() if k not in drop
    }
    assert spy.seen == [("POST", path)]  # only the full app's own call
