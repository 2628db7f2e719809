"""/health is liveness; /ready names the failing part with a 503."""

from __future__ import annotations

import httpx

from tests.stack import refused_port, unique, wait_for


async def test_health_and_ready(stack) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api()
    model = unique("h")
    await stack.worker(model=[model])
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{api.url}/health")).json() == {"status": "ok"}
        resp = await client.get(f"{api.url}/ready")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["nats"] is True and body["redis"] is True
    assert body["workers"] >= 1


async def test_ready_503_when_redis_is_down(stack) -> None:  # type: ignore[no-untyped-def]
    stack.redis_url = f"redis://127.0.0.1:{refused_port()}/0"
    api = await stack.api()
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{api.url}/ready")
    assert resp.status_code == 503
    assert resp.json()["redis"] is False and resp.json()["failing"] == ["redis"]


async def test_ready_503_when_nats_goes_away(own_nats, stack) -> None:  # type: ignore[no-untyped-def]
    own = own_nats
    stack.nats_url = own.url
    api = await stack.api()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{api.url}/ready")).status_code == 200
        own.stop()
        await wait_for(lambda: not api.runtime.nc.is_connected, timeout=5)
        resp = await client.get(f"{api.url}/ready")
        assert resp.status_code == 503
        assert resp.json()["nats"] is False and "nats" in resp.json()["failing"]
        assert (await client.get(f"{api.url}/health")).status_code == 200
        # With NATS gone a request fails fast with 503, never hangs.
        body = {"model": "anything", "messages": [{"role": "user", "content": "x"}]}
        resp = await client.post(f"{api.url}/v1/chat/completions", json=body, timeout=5)
        assert resp.status_code in (404, 503)
