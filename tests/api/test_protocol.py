"""Bad input gets a clear OpenAI-style error, never a hang or a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.stack import unique, wait_for


@pytest.fixture
async def api_url(stack) -> str:  # type: ignore[no-untyped-def]
    api = await stack.api(max_body_bytes=10_000)
    model = unique("v")
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    api.model = model
    return api


def _assert_error(resp: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_request", None),
        (b'{"model": "x"}', "invalid_request", "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "invalid_request", "model"),
        (b'{"model": "x", "messages": "hello"}', "invalid_request", "messages"),
        (
            b'{"model": "x", "messages": [{"role": "wizard", "content": "x"}]}',
            "invalid_request",
            "messages[0].role",
        ),
        (
            b'{"model": "x", "messages": [{"role": "user", "content": 5}]}',
            "invalid_request",
            "messages[0].content",
        ),
        (b'{"model": "x", "messages": [], "temperature": "hot"}', "invalid_request", "temperature"),
        (b'{"model": "x", "messages": []}', "invalid_request", "messages"),
    ],
)
async def test_bad_bodies_get_400(api_url, body: bytes, code: str, param: str | None) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{api_url.url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    _assert_error(resp, 400, code, param)


async def test_oversized_body_gets_413(api_url) -> None:  # type: ignore[no-untyped-def]
    big = {"model": api_url.model, "messages": [{"role": "user", "content": "x" * 20_000}]}
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{api_url.url}/v1/chat/completions", json=big)
        _assert_error(resp, 413, "request_too_large")

        async def chunked():  # type: ignore[no-untyped-def]
            for _ in range(30):
                yield b" " * 1000

        resp = await client.post(f"{api_url.url}/v1/chat/completions", content=chunked())
        _assert_error(resp, 413, "request_too_large")


async def test_body_over_nats_max_payload_gets_413(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from llmq.embedded import EmbeddedNats

    small = EmbeddedNats(tmp_path / "small-nats", max_payload=4096)
    try:
        stack.nats_url = small.url
        api = await stack.api(max_body_bytes=1_000_000)
        model = unique("v")
        await stack.worker(model=[model])
        await wait_for(lambda: api.runtime.registry.workers_for(model))
        body = {"model": model, "messages": [{"role": "user", "content": "y" * 8000}]}
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{api.url}/v1/chat/completions", json=body)
        _assert_error(resp, 413, "request_too_large")
    finally:
        for worker in stack.workers:
            await worker.close()
        stack.workers.clear()
        for api in stack.apis:
            await api.stop()
        stack.apis.clear()
        small.stop()


async def test_unknown_route_and_method_use_the_error_shape(api_url) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient() as client:
        _assert_error(await client.get(f"{api_url.url}/v1/nope"), 404, "not_found")
        _assert_error(
            await client.get(f"{api_url.url}/v1/chat/completions"), 405, "method_not_allowed"
        )


async def test_valid_request_still_served_after_bad_ones(api_url) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient() as client:
        await client.post(f"{api_url.url}/v1/chat/completions", content=b"{oops")
        body = {"model": api_url.model, "messages": [{"role": "user", "content": "fine"}]}
        resp = await client.post(f"{api_url.url}/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "fine"
