"""A non-streaming client that goes away cancels its job within a second — on the worker
and its upstream call — for chat, completions, embeddings and responses; the request is
booked as 499 with what was used, and the worker's only slot is free again at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.stack import unique, wait_for
from tests.worker.backends.fake_upstreams import (
    FakeUpstream,
    Reply,
    json_reply,
    openai_chat,
    openai_completion,
)


def hanging(reply: Reply) -> Reply:
    reply.hang_after = 1  # headers and one piece, then nothing until the caller hangs up
    return reply


ROUTES = {
    "/v1/chat/completions": lambda model: {
        "model": model, "messages": [{"role": "user", "content": "x"}]
    },
    "/v1/completions": lambda model: {"model": model, "prompt": "x"},
    "/v1/embeddings": lambda model: {"model": model, "input": "x"},
    "/v1/responses": lambda model: {"model": model, "input": "x"},
    "/v1/messages": lambda model: {
        "model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]
    },
}  # fmt: skip
UPSTREAM_PATH = {"/v1/responses": "/v1/chat/completions", "/v1/messages": "/v1/chat/completions"}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_client_that_leaves_cancels_its_job(stack, route: str) -> None:  # type: ignore[no-untyped-def]
    model = unique("gone")
    async with FakeUpstream() as upstream:
        upstream.route("/v1/models", json_reply(200, {"object": "list", "data": []}))
        upstream.route("/v1/chat/completions", hanging(openai_chat(["a", "b", "c"])))
        upstream.route("/v1/completions", hanging(openai_completion(["a", "b"])))
        upstream.route(
            "/v1/embeddings",
            hanging(Reply(chunks=[b'{"object": "list", ', b'"data": []}'])),
        )
        api = await stack.api()
        worker = await stack.worker(
            model=[model], backend="openai", backend_url=f"{upstream.url}/v1", capacity=1
        )
        await wait_for(lambda: worker.id in {w.id for w in api.runtime.registry.workers_for(model)})
        async with httpx.AsyncClient(base_url=api.url, timeout=1.0) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(route, json=ROUTES[route](model))
        left = time.monotonic()
        await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
        assert upstream.disconnected_at is not None
        assert upstream.disconnected_at - left < 1.0, upstream.disconnected_at - left
        asked = upstream.last.path
        assert asked == UPSTREAM_PATH.get(route, route)
        # the slot is free: the next request runs at once on the worker's only slot
        upstream.route("/v1/chat/completions", openai_chat(["fine"]))
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            chat = ROUTES["/v1/chat/completions"](model)
            ok = await http.post("/v1/chat/completions", json=chat)
            assert ok.status_code == 200, ok.text
            metrics = (await http.get("/metrics")).text
        closed = [
            line for line in metrics.splitlines()
            if line.startswith("llmq_api_requests_total") and 'status="499"' in line
            and f'model="{model}"' in line
        ]  # fmt: skip
        assert closed and float(closed[0].rsplit(" ", 1)[1]) == 1, closed
