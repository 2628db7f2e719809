"""KV tools against a real nats-server: create-once, compare-and-set under contention,
scans, and a follower that replays after a server restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.js.api import KeyValueConfig, StorageType

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.connection import connect
from llmq.dispatcher.tasks import retry
from llmq.embedded import EmbeddedNats
from tests.stack import unique, wait_for


class Counter(msgspec.Struct):
    n: int = 0


decoder = msgspec.json.Decoder(Counter)


async def bucket(url: str):  # type: ignore[no-untyped-def]
    nc = await connect(url, "test")
    js = nc.jetstream()
    name = unique("T")
    kv = await js.create_key_value(KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE))
    return nc, kv


async def test_create_once_and_concurrent_mutate(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc, kv = await bucket(nats_server.url)
    assert await kvs.create_once(kv, "a.b", b"first")
    assert not await kvs.create_once(kv, "a.b", b"second")
    assert await kvs.read_raw(kv, "a.b") == b"first"
    await kv.put("c.one", msgspec.json.encode(Counter()))

    def bump(c: Counter) -> Counter:
        c.n += 1
        return c

    await asyncio.gather(*(kvs.mutate(kv, "c.one", decoder, bump) for _ in range(20)))
    found = await kvs.read(kv, "c.one", decoder)
    assert found is not None and found[0].n == 20  # no lost update
    assert await kvs.mutate(kv, "c.missing", decoder, bump) is None
    unchanged = await kvs.mutate(kv, "c.one", decoder, lambda c: None)
    assert unchanged is not None and unchanged[2] is False
    assert set(await kvs.scan(kv, "c.*")) == {"c.one"}
    assert await kvs.scan(kv, "c.*", meta_only=True) == {"c.one": b""}
    assert await kvs.scan(kv, "nothing.*") == {}
    await nc.close()


async def test_follower_replays_after_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    try:
        nc, kv = await bucket(server.url)
        seen: dict[str, bytes | None] = {}
        syncs = []
        follower = kvs.Follower(
            kv, "x.*", lambda k, v: seen.__setitem__(k, v), lambda: syncs.append(1), resync=1.0
        )
        await kv.put("x.1", b"one")
        follower.start()
        await wait_for(lambda: seen.get("x.1") == b"one")
        await kv.put("x.2", b"two")
        await wait_for(lambda: seen.get("x.2") == b"two")
        await asyncio.to_thread(server.restart)
        await wait_for(lambda: nc.is_connected, timeout=10)
        await retry(lambda: kv.put("x.3", b"three"), "put")
        await wait_for(lambda: seen.get("x.3") == b"three", timeout=10)
        await kv.delete("x.1")
        await wait_for(lambda: seen.get("x.1", b"") is None, timeout=5)
        assert len(syncs) >= 2  # replayed at least once
        await follower.stop()
        await nc.close()
    finally:
        server.stop()


async def test_a_scan_sees_every_key_written_before_it(nats_server) -> None:  # type: ignore[no-untyped-def]
    """The watcher's end marker can overtake entries already pushed; many scans at once right
    after the writes (the situation where that race showed: a batch list came back empty)."""
    nc, kv = await bucket(nats_server.url)
    for i in range(30):
        await kv.put(f"k.{i}", b"v")
    await kv.delete("k.0")
    scans = await asyncio.gather(*(kvs.scan(kv, "k.*", timeout=10) for _ in range(40)))
    expected = {f"k.{i}" for i in range(1, 30)}
    assert all(set(found) == expected for found in scans)
    await nc.close()
