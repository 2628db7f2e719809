"""The api's uvicorn server keeps an idle client connection open longer than clients keep
it idle, so a client that reuses a pooled connection never finds it closed under it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llmq.api.server import uvicorn_config
from llmq.schemas.settings import Settings

IDLE = 6.0
"""Longer than httpx's (and the openai SDK's) 5 s pool expiry and uvicorn's 5 s default."""


def test_the_keep_alive_timeout_is_a_setting_that_outlasts_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert uvicorn_config(Settings()).timeout_keep_alive == 75
    monkeypatch.setenv("LLMQ_KEEP_ALIVE_TIMEOUT", "90")
    assert uvicorn_config(Settings()).timeout_keep_alive == 90


def _local_port(response: httpx.Response) -> int:
    """The client's end of the connection that carried `response`."""
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


async def test_an_idle_connection_is_still_open_after_six_seconds(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    limits = httpx.Limits(max_connections=1, keepalive_expiry=IDLE * 10)
    async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=30) as client:
        first = await client.get("/health")
        used = _local_port(first)
        await asyncio.sleep(IDLE)
        again = await client.get("/health")
        reused = _local_port(again)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    # (httpx sees a connection the server closed while idle and opens another: same answer,
    # but a close that crosses the client's next request is a connection reset)
    assert reused == used, "the api closed the idle connection"
