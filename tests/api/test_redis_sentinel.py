"""Redis/Valkey behind Sentinel: llmq finds the master through the sentinels and follows a
failover. Chat traffic with tenants and quotas runs while the master is SIGKILLed and the
sentinels promote the replica: no request hangs; by default (`quota_store_wait`) each waits
for the promoted master and is served through the exact path; with the wait off each
succeeds or (fail-closed) gets a clean 503 `quota_store_down`; with `quota_fail_open` each
is served; afterwards traffic is normal again, and the seconds it took are measured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Quota, Tenant, TenantStore, check_at_start, connect, connect_with
from llmq.api.tenancy.client import parse_sentinel_url
from llmq.cli import main as cli_main
from llmq.schemas.settings import ConnectionSettings
from tests.redis_ha import EmbeddedSentinelSet
from tests.stack import unique, wait_for

HANG = 30.0
"""A request that takes longer than this counts as hung."""
LOOPS = 4
LEASE = 6.0
"""Seconds of a concurrency slot's lease in the failover tests."""


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


@pytest.fixture
def locked_sentinel_set(tmp_path: Path) -> Any:
    """A master and a replica with `requirepass`, and three sentinels with their own
    `requirepass` (a different one), ready to fail over."""
    servers = EmbeddedSentinelSet(
        tmp_path / "locked",
        password="vk-" + uuid.uuid4().hex,
        sentinel_password="sn-" + uuid.uuid4().hex,
    )
    try:
        servers.wait_ready()
        yield servers
    finally:
        servers.stop()


def _locked_settings(servers: EmbeddedSentinelSet, **secrets: str) -> ConnectionSettings:
    return ConnectionSettings(
        redis_sentinels=[s.address for s in servers.sentinels],
        redis_sentinel_master=servers.master_name,
        **secrets,
    )


async def _refused(redis: Any, url: str, caplog: pytest.LogCaptureFixture) -> str:
    """`check_at_start` gives up within its deadline; the log line it wrote."""
    caplog.clear()
    started = time.monotonic()
    assert not await check_at_start(redis, url, 5.0)
    assert time.monotonic() - started < 10
    await redis.aclose()
    return caplog.text


async def test_the_passwords_reach_the_sentinels_and_the_master(
    locked_sentinel_set: EmbeddedSentinelSet,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sentinels with their own `requirepass`, data nodes with theirs: LLMQ_REDIS_PASSWORD
    (or a URL's own) for the data nodes and LLMQ_REDIS_SENTINEL_PASSWORD(_FILE) for the
    sentinels reach the master; a missing or wrong one of either is a clear error at once
    (never a hang), naming the setting to check and never a password; `llmq tenants` too."""
    servers = locked_sentinel_set
    caplog.set_level(logging.INFO)
    (tmp_path / "sentinel-pw").write_text(servers.sentinel_password + "\n")
    by_settings = connect_with(
        _locked_settings(
            servers,
            redis_password=servers.password,
            redis_sentinel_password_file=str(tmp_path / "sentinel-pw"),
        )
    )
    at = servers.url.index("//") + 2
    by_url = connect(
        servers.url[:at] + f":{servers.password}@" + servers.url[at:],
        sentinel_password=servers.sentinel_password,
    )
    try:
        assert await check_at_start(by_settings, servers.url, 5.0)
        assert await by_settings.set("llmq-test:locked", "1")
        assert (await by_settings.info("server"))["tcp_port"] == servers.master.port
        assert await by_url.get("llmq-test:locked") == "1"
    finally:
        for client in (by_settings, by_url):
            await client.aclose()

    for sentinel_password in ("", "wrong"):
        conn = _locked_settings(
            servers, redis_password=servers.password, redis_sentinel_password=sentinel_password
        )
        said = await _refused(connect_with(conn), servers.url, caplog)
        assert "Redis Sentinels at" in said and "refused authentication" in said, said
        assert "LLMQ_REDIS_SENTINEL_PASSWORD" in said, said
    for password in ("", "wrong"):
        conn = _locked_settings(
            servers, redis_password=password, redis_sentinel_password=servers.sentinel_password
        )
        said = await _refused(connect_with(conn), servers.url, caplog)
        assert "refused authentication" in said and "LLMQ_REDIS_PASSWORD" in said, said

    # The operator's CLI takes the same settings (LLMQ_REDIS_SENTINELS, not LLMQ_REDIS_URL)
    # and says why it cannot go on.
    monkeypatch.setenv("LLMQ_REDIS_SENTINELS", ",".join(s.address for s in servers.sentinels))
    monkeypatch.setenv("LLMQ_REDIS_SENTINEL_MASTER", servers.master_name)
    monkeypatch.setenv("LLMQ_REDIS_PASSWORD", servers.password)
    monkeypatch.setenv("LLMQ_REDIS_SENTINEL_PASSWORD", servers.sentinel_password)
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["tenants", "list", "--json"]) == 0
    assert capsys.readouterr().out.startswith("[")
    monkeypatch.setenv("LLMQ_REDIS_SENTINEL_PASSWORD", "wrong")
    assert await asyncio.to_thread(cli_main, ["tenants", "list"]) == 2
    said = capsys.readouterr().err
    assert said == (
        f"llmq: the Redis Sentinels of {servers.url} refused the password: check "
        "LLMQ_REDIS_SENTINEL_PASSWORD or LLMQ_REDIS_SENTINEL_PASSWORD_FILE\n"
    )

    for secret in (servers.password, servers.sentinel_password):
        assert secret not in caplog.text
        for server in [servers.master, servers.replica, *servers.sentinels]:
            assert secret not in " ".join(map(str, server.proc.args))  # type: ignore[arg-type]
    for sentinel in servers.sentinels:  # sentinel rewrites its config with the umask
        assert sentinel.log_path.parent.stat().st_mode & 0o077 == 0


async def test_a_wrong_sentinel_password_keeps_the_api_unready(
    locked_sentinel_set: EmbeddedSentinelSet, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The api starts, says at once why Redis is unusable, reports `/ready` failing on
    `redis`, and answers a chat with a clean 503 (no hang)."""
    servers = locked_sentinel_set
    admin = connect(
        servers.url, password=servers.password, sentinel_password=servers.sentinel_password
    )
    try:
        tenant = unique("locked")
        await TenantStore(admin).create(Tenant(name=tenant))
        key, _ = await TenantStore(admin).create_key(tenant, label="wrong sentinel password")
    finally:
        await admin.aclose()
    caplog.set_level(logging.INFO)
    api = await stack.api(
        auth_mode="keys",
        redis_sentinels=[s.address for s in servers.sentinels],
        redis_sentinel_master=servers.master_name,
        redis_password=servers.password,
        redis_sentinel_password="wrong",
    )
    assert f"Redis Sentinels at {servers.url} refused authentication" in caplog.text
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"{api.url}/ready")
        assert ready.status_code == 503 and ready.json()["failing"] == ["redis"]
        started = time.monotonic()
        resp = await http.post(
            f"{api.url}/v1/chat/completions",
            json={"model": "any", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        )
    assert time.monotonic() - started < 10
    assert resp.status_code == 503, resp.text
    assert set(resp.json()["error"]) >= {"message", "type"}
    assert resp.json()["error"]["code"] == "tenant_store_down"
    assert servers.password not in caplog.text and servers.sentinel_password not in caplog.text


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
    stack: Any, sentinels: EmbeddedSentinelSet, fail_open: bool, store_wait: float = 0.0
) -> dict[str, Any]:
    stack.redis_url = sentinels.url
    secrets = {
        "redis_password": sentinels.password,
        "redis_sentinel_password": sentinels.sentinel_password,
    }
    # Keys stay cached through the window, so the only Redis work of a chat is its quota.
    # A short lease: a release the old master took but had not yet copied to its replica when
    # it died (Redis replication is asynchronous) is reclaimed by the lease, not lost.
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=300.0, quota_fail_open=fail_open,
        reservation_lease=LEASE, quota_store_wait=store_wait, **secrets,
    )  # fmt: skip
    model = unique("sentinel")
    await stack.worker(model=[model])
    admin = connect(
        sentinels.url, password=sentinels.password, sentinel_password=sentinels.sentinel_password
    )
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
    admin = connect(
        sentinels.url, password=sentinels.password, sentinel_password=sentinels.sentinel_password
    )
    try:

        async def released() -> bool:
            return await Quota(admin).inflight(tenant) == 0

        # Every slot taken is given back through the failover: released, or at the latest
        # reclaimed when its lease runs out (none leaked).
        await wait_for(released, timeout=LEASE + 15, interval=0.2)
    finally:
        await admin.aclose()
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


async def test_failover_fail_closed(locked_sentinel_set: EmbeddedSentinelSet, stack: Any) -> None:
    """`quota_store_wait=0`: while no master answers, a chat gets 503 `quota_store_down`
    (never served unchecked, never hung); then traffic is normal on the promoted replica.
    With passwords on the data nodes and on the sentinels (which then must authenticate to
    each other to agree on the failover)."""
    figures = await _failover_under_load(stack, locked_sentinel_set, fail_open=False)
    assert set(figures["outcomes"]) <= {"ok", "503:quota_store_down"}, figures
    assert "503:quota_store_down" in figures["outcomes"], figures
    assert figures["normal_after_s"] < 30, figures


async def test_failover_fail_open(sentinel_set: EmbeddedSentinelSet, stack: Any) -> None:
    """`quota_fail_open`: every chat during the window is served (without a quota check)."""
    figures = await _failover_under_load(stack, sentinel_set, fail_open=True)
    assert figures["outcomes"] == ["ok"], figures
    assert figures["served_in_window"] > 0, figures


async def test_failover_rides_through(sentinel_set: EmbeddedSentinelSet, stack: Any) -> None:
    """`quota_store_wait` longer than the promotion: a chat that finds no master waits for
    the promoted one and is admitted through the exact path (the quota script on the new
    master): every chat of the window is served, none unchecked, every slot given back."""
    figures = await _failover_under_load(stack, sentinel_set, fail_open=False, store_wait=10.0)
    assert figures["outcomes"] == ["ok"], figures
    assert figures["failed"] == 0, figures
