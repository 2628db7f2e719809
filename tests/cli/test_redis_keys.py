"""`llmq redis migrate-keys`: the one-off rename to hash-tagged keys as a subcommand. A dry
run counts and finds conflicts without changing anything; the real run renames what the dry
run counted; a second run finds nothing; a key whose new name exists is left alone (exit 1);
no Redis or a password on the command line end it at once with a clear message (exit 2;
a Cluster too: tests/api/test_redis_cluster.py). `python -m llmq.redis_keys` is the same command."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from llmq import redis_keys
from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from llmq.cli import main
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names
from tests.stack import refused_port, unique


async def make_old_layout(redis: Redis) -> tuple[str, str]:
    """A tenant with an API key, a released and an open reservation, written by this
    version and then renamed back to the names before hash tags. -> (tenant, api key)."""
    store, quota = TenantStore(redis), Quota(redis)
    tenant = unique("old")
    await store.create(Tenant(name=tenant, tpm=1000))
    key, _ = await store.create_key(tenant)
    assert (await quota.reserve(tenant, "m", 10, 90, "before")).allowed
    assert (await quota.reserve(tenant, "m", 10, 90, "open")).allowed
    assert await quota.release(tenant, "m", "before", 10, 5)
    tag = names.tenant_tag(tenant)
    for name in [str(k) async for k in redis.scan_iter(match=f"llmq:*{tag}*")]:
        await redis.rename(name, name.replace(tag, tenant))
    reservation = names.reservation_key(tenant, "open").replace(tag, tenant)
    for f in ("win", "day", "month"):
        old = await redis.hget(reservation, f)
        if old:
            await redis.hset(reservation, f, str(old).replace(tag, tenant))
    assert await store.get(tenant) is None  # the new layout does not see the old keys
    return tenant, key


@pytest.fixture
def old_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedRedis]:
    """A server of its own (the migration scans every `llmq:` key), named by LLMQ_REDIS_URL."""
    server = EmbeddedRedis(tmp_path / "old-layout")
    monkeypatch.setenv("LLMQ_REDIS_URL", server.url)
    monkeypatch.delenv("LLMQ_REDIS_SENTINELS", raising=False)
    yield server
    server.stop()


def _on(server: EmbeddedRedis, work: object) -> object:
    async def go() -> object:
        redis = connect(server.url, timeout=10.0)
        try:
            return await work(redis)  # type: ignore[operator]
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_dry_run_then_rename(old_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]) -> None:
    tenant, key = _on(old_server, make_old_layout)  # type: ignore[misc]

    assert main(["redis", "migrate-keys", "--dry-run"]) == 0
    counted = capsys.readouterr().out
    assert counted.startswith("would rename ") and old_server.url in counted, counted
    would = int(counted.split()[2])
    assert would >= 7

    async def untouched(redis: Redis) -> bool:
        return await TenantStore(redis).get(tenant) is None

    assert _on(old_server, untouched)

    assert main(["redis", "migrate-keys"]) == 0
    assert capsys.readouterr().out.startswith(f"renamed {would} keys at {old_server.url}")

    async def found(redis: Redis) -> None:
        store, quota = TenantStore(redis), Quota(redis)
        assert await store.resolve_key(key) == await store.get(tenant) is not None
        assert await quota.inflight(tenant) == 1
        assert await quota.release(tenant, "m", "open", 10, 20)  # the migrated reservation
        assert await quota.inflight(tenant) == 0
        # (Since the GCRA rates a release reconciles the tenant's rate hash, not a minute
        # window: its slot and its usage show the migrated reservation was found.)
        rows = await UsageReader(redis).usage(tenant, days=1)
        assert sum(r.requests for r in rows) == 2

    _on(old_server, found)
    # The alias, and a second run: nothing left to do.
    assert redis_keys.main(["--redis-url", old_server.url]) == 0
    assert capsys.readouterr().out.startswith("renamed 0 keys")


def test_a_taken_new_name_is_left_alone(
    old_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = unique("both")

    async def both(redis: Redis) -> None:
        await redis.set(f"llmq:usage:{tenant}:2026-11-28", "old")
        await redis.set(f"llmq:usage:{names.tenant_tag(tenant)}:2026-11-28", "new")

    _on(old_server, both)
    for argv in (["--dry-run"], []):
        assert main(["redis", "migrate-keys", *argv]) == 1
        said = capsys.readouterr()
        assert said.out.startswith(("would rename 0 keys", "renamed 0 keys")), said.out
        assert f"left alone (its new name exists already): llmq:usage:{tenant}:" in said.err

    async def kept(redis: Redis) -> list[str | None]:
        return [
            await redis.get(f"llmq:usage:{tenant}:2026-11-28"),
            await redis.get(f"llmq:usage:{names.tenant_tag(tenant)}:2026-11-28"),
        ]

    assert _on(old_server, kept) == ["old", "new"]


def test_no_redis_or_a_password_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    down = f"redis://127.0.0.1:{refused_port()}/0"
    assert main(["redis", "migrate-keys", "--redis-url", down]) == 2
    assert f"cannot reach Redis at {down}" in capsys.readouterr().err
    assert main(["redis", "migrate-keys", "--redis-url", "redis://:secret@h:6379/0"]) == 2
    said = capsys.readouterr().err
    assert "no password in --redis-url" in said and "secret" not in said
