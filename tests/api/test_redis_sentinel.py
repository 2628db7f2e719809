"""Redis/Valkey behind Sentinel: llmq finds the master through the sentinels and follows a
failover. Chat traffic with tenants and quotas runs while the master is SIGKILLed and the
sentinels promote the replica: no request hangs, each succeeds or (fail-closed, the default)
gets a clean 503 `quota_store_down`; with `quota_fail_open` each is served; afterwards
traffic is normal again, and the seconds it took are measured."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from llmq.api.tenancy import Tenant, TenantStore, check_at_start, connect, connect_with
from llmq.api.tenancy.client import parse_sentinel_url
from llmq.embedded_redis_ha import EmbeddedSentinelSet
from llmq.schemas.settings import ConnectionSettings
from tests.stack import unique, wait_for

HANG = 30.0
"""A request that takes longer than this counts as hung."""
LOOPS = 4


def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@h1:1,h2/main/3") == (
        [("h1", 1), ("h2", 26379)],
        "main",
        3,
        "pw",
    )
    assert parse_sentinel_url("redis+sentinel://h1:26380/main") == ([("h1", 26380)], "main", 0, "")
    with pytest.raises(ValueError):
        parse_sentinel_url("redis+sentinel://h1:26380")


async def test_settings_name_the_sentinels(sentinel_set: EmbeddedSentinelSet) -> None:
    """LLMQ_REDIS_SENTINELS + LLMQ_REDIS_SENTINEL_MASTER reach the master (writes land on
    it, not on the replica)."""
    conn = ConnectionSettings(
        redis_sentinels=[s.address for s in sentinel_set.sentinels],
        redis_sentinel_master=sentinel_set.master_name,
    )
    redis = connect_with(conn)
    try:
        await redis.set("llmq-test:sentinel", "written")
        assert (await redis.info("server"))["tcp_port"] == sentinel_set.master.port
    finally:
        await redis.aclose()


async def test_the_redis_password_reaches_the_master(tmp_path: Path) -> None:
    """With `requirepass` on the data nodes: LLMQ_REDIS_PASSWORD (or a URL's own password)
    authenticates to the master the sentinels name; none is refused clearly."""
    password = "vk-" + uuid.uuid4().hex
    servers = EmbeddedSentinelSet(tmp_path / "locked", password=password)
    try:
        servers.wait_ready()
        conn = ConnectionSettings(
            redis_sentinels=[s.address for s in servers.sentinels],
            redis_sentinel_master=servers.master_name,
            redis_password=password,
        )
        by_setting = connect_with(conn)
        at = servers.url.index("//") + 2
        by_url = connect(servers.url[:at] + f":{password}@" + servers.url[at:])
        without = connect(servers.url)
        try:
            assert await by_setting.set("llmq-test:locked", "1")
            assert await by_url.get("llmq-test:locked") == "1"
            assert not await check_at_start(without, servers.url, 5.0)
        finally:
            for client in (by_setting, by_url, without):
                await client.aclose()
        for server in [servers.master, servers.replica, *servers.sentinels]:
            assert password not in " ".join(map(str, server.proc.args))  # type: ignore[arg-type]
    finally:
        servers.stop()


@dataclass
class Load:
    """Chat requests from `LOOPS` concurrent clients until stopped, each outcome recorded
    as (started, ended, outcome)."""

    client: openai.AsyncOpenAI
    model: str
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self) -> str:
        try:
            async with asyncio.timeout(HANG):
                reply = await self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": "through a failover"}],
                    max_tokens=16,
                    timeout=HANG + 5,
                )
            return "ok" if reply.choices[0].message.content else "empty"
        except openai.APIStatusError as exc:
            body: Any = exc.body if isinstance(exc.body, dict) else {}
            code = (body.get("error") or body).get("code")
            return f"{exc.status_code}:{code}"
        except (TimeoutError, openai.APITimeoutError):
            return "hung"
        except openai.APIConnectionError:
            return "connection_error"

    async def loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            outcome = await self.one()
            self.outcomes.append((started, time.monotonic(), outcome))
            if outcome != "ok":
                await asyncio.sleep(0.05)

    def ok_since(self, moment: float) -> int:
        return sum(1 for start, _, o in self.outcomes if start >= moment and o == "ok")

    def tail_ok(self, n: int) -> bool:
        tail = self.outcomes[-n:]
        return len(tail) == n and all(o == "ok" for _, _, o in tail)


async def _failover_under_load(
    stack: Any, sentinels: EmbeddedSentinelSet, fail_open: bool
) -> dict[str, Any]:
    stack.redis_url = sentinels.url
    # Keys stay cached through the window, so the only Redis work of a chat is its quota.
    api = await stack.api(auth_mode="keys", key_cache_ttl=300.0, quota_fail_open=fail_open)
    model = unique("sentinel")
    await stack.worker(model=[model])
    admin = connect(sentinels.url)
    try:
        store = TenantStore(admin)
        tenant = unique("ha")
        await store.create(Tenant(name=tenant, rpm=1_000_000, max_concurrent=100))
        key, _ = await store.create_key(tenant, label="sentinel failover")
    finally:
        await admin.aclose()
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
    load = Load(openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0), model)
    loops = [asyncio.create_task(load.loop()) for _ in range(LOOPS)]
    try:
        await wait_for(lambda: load.ok_since(0) >= 20, timeout=30)
        killed = time.monotonic()
        old_master = sentinels.master.port
        await asyncio.to_thread(sentinels.master.kill)

        async def promoted() -> bool:
            port = await asyncio.to_thread(sentinels.master_port)
            return port == sentinels.replica.port

        await wait_for(promoted, timeout=60, interval=0.1)
        promoted_at = time.monotonic()
        # Normal again: a run of successes, all started after the promotion.
        await wait_for(
            lambda: load.ok_since(promoted_at) >= 30 and load.tail_ok(3 * LOOPS), timeout=60
        )
    finally:
        load.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*loops), HANG + 10)
    after = [(s, e, o) for s, e, o in load.outcomes if e >= killed]
    failed = [(s, e, o) for s, e, o in after if o != "ok"]
    last_failure = max((e for _, e, _ in failed), default=killed)
    figures = {
        "old_master": old_master,
        "promoted_after_s": round(promoted_at - killed, 2),
        "normal_after_s": round(last_failure - killed, 2),
        "requests": len(load.outcomes),
        "during_failover": len(after),
        "failed": len(failed),
        "outcomes": sorted({o for _, _, o in load.outcomes}),
        "slowest_s": round(max(e - s for s, e, _ in load.outcomes), 2),
        "served_in_window": sum(
            1 for s, e, o in load.outcomes if o == "ok" and s >= killed and e <= promoted_at
        ),
    }
    print(f"\nsentinel failover (quota_fail_open={fail_open}): {figures}")
    assert not any(o == "hung" for _, _, o in load.outcomes), figures
    assert figures["slowest_s"] < HANG, figures
    assert load.tail_ok(3 * LOOPS), figures
    return figures


async def test_failover_fail_closed(sentinel_set: EmbeddedSentinelSet, stack: Any) -> None:
    """Default: while no master answers, a chat gets 503 `quota_store_down` (never served
    unchecked, never hung); then traffic is normal on the promoted replica."""
    figures = await _failover_under_load(stack, sentinel_set, fail_open=False)
    assert set(figures["outcomes"]) <= {"ok", "503:quota_store_down"}, figures
    assert "503:quota_store_down" in figures["outcomes"], figures
    assert figures["normal_after_s"] < 30, figures


async def test_failover_fail_open(sentinel_set: EmbeddedSentinelSet, stack: Any) -> None:
    """`quota_fail_open`: every chat during the window is served (without a quota check)."""
    figures = await _failover_under_load(stack, sentinel_set, fail_open=True)
    assert figures["outcomes"] == ["ok"], figures
    assert figures["served_in_window"] > 0, figures
