"""A flood of list calls from one tenant (issue 27, finding 3): `GET /v1/files`, `/v1/jobs`
and `/v1/batches` leave no NATS consumer behind, are paced per tenant, and another tenant's
calls succeed during and after the flood. The api runs as its own process, as deployed, so
the flooding client does not share its event loop."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats

from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.dispatcher.kv import SCAN_CONSUMER_IDLE
from llmq.embedded import free_port
from llmq.schemas.names import model_kv_key
from tests.stack import one_shot_http, unique, wait_for

LISTS = ("/v1/files", "/v1/jobs", "/v1/batches")
FLOOD = 1_000
PER_TENANT = 4
"""`list_concurrency`'s default: list calls one tenant may have open on one replica."""


async def _consumers(nats_url: str, tenant: str) -> int:
    """Consumers on the KV buckets (streams `KV_<bucket>`) that read `tenant`'s keys: what
    its list calls open. Only that tenant's: the session's nats-server holds other tests'
    batches and jobs, which this test's api sweeps (and so opens consumers on) meanwhile."""
    token = f".{model_kv_key(tenant)}"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        n = 0
        for info in await js.streams_info():
            if info.config.name.startswith("KV_"):
                for c in await js.consumers_info(info.config.name):
                    n += token in (c.config.filter_subject or "")
        return n
    finally:
        await nc.close()


async def _settled(nats_url: str, tenant: str, before: int) -> int:
    """`tenant`'s consumer count once back at `before`, or when a consumer whose deletion
    failed (the api gives it 2 s) would have been removed by nats-server as idle."""
    deadline = time.monotonic() + SCAN_CONSUMER_IDLE + 10.0
    left = await _consumers(nats_url, tenant)
    while left > before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = await _consumers(nats_url, tenant)
    return left


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/ready")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_a_flood_of_lists_leaves_no_consumers_and_spares_other_tenants(  # type: ignore[no-untyped-def]
    stack, redis_server
) -> None:
    a, b = unique("ta"), unique("tb")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    await store.create(Tenant(name=a, rpm=100_000))
    await store.create(Tenant(name=b, rpm=100_000))
    await redis.aclose()
    port = free_port()
    stack.process("api", "--port", str(port), auth_mode="header", trusted_tenants=f"{a},{b}")
    url = f"http://127.0.0.1:{port}"
    await wait_for(lambda: _ready(url), timeout=60)
    async with httpx.AsyncClient(base_url=url, timeout=30) as other:
        ha, hb = {"X-Tenant-ID": a}, {"X-Tenant-ID": b}

        async def b_calls() -> list[int]:
            return [(await other.get(path, headers=hb)).status_code for path in LISTS * 3]

        await b_calls()  # warm: every long-lived watch of the api is open
        before = await _consumers(stack.nats_url, a)
        flooding = [
            asyncio.ensure_future(asyncio.wait_for(one_shot_http(url, "GET", LISTS[i % 3], ha), 60))
            for i in range(FLOOD)
        ]
        await asyncio.wait(flooding, return_when=asyncio.FIRST_COMPLETED)  # the api answers it
        open_calls = sum(not call.done() for call in flooding)
        during = await b_calls()
        amid = await _consumers(stack.nats_url, a)
        answers = await asyncio.gather(*flooding, return_exceptions=True)
        after = await b_calls()
        left = await _settled(stack.nats_url, a, before)
    # the flood on plain sockets (`one_shot_http`): 1,000 httpx connections would keep this
    # process, and so the other tenant's calls, busy far longer than the api takes
    codes = [r[0] if isinstance(r, tuple) else repr(r) for r in answers]
    print("flood", {c: codes.count(c) for c in set(codes)}, "B", during, after)
    print("consumers before, amid, after the flood:", before, amid, left)
    print("flood calls still open when B's began:", open_calls)
    assert open_calls > 0  # B's calls went in while the flood was on
    assert during == [200] * 9 and after == [200] * 9, (during, after)
    assert not [c for c in codes if c not in (200, 429)], sorted(set(map(str, codes)))
    # During the flood at most the open calls' consumers; none outlives its call.
    assert amid - before <= PER_TENANT + 1, (before, amid)
    assert left - before <= 0, (before, left)
