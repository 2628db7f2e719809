"""Answers on their way to the store (api/cache/writes.py) on a real Valkey: served before
they land, written together in one pipelined write, bounded."""

from __future__ import annotations

import time

import pytest

from llmq.api.cache.store import CacheStore, Entry
from llmq.api.cache.writes import Writes
from llmq.api.tenancy import connect
from llmq.schemas.settings import CacheSettings
from tests.stack import unique, wait_for


@pytest.fixture
async def redis(redis_server):  # type: ignore[no-untyped-def]
    client = connect(redis_server.url, decode_responses=False)  # as the api makes it
    yield client
    await client.aclose()


def _entry(text: str) -> Entry:
    body = b'{"choices":[{"message":{"content":"' + text.encode() + b'"}}]}'
    return Entry(kind="chat", stream=False, created=time.time(), model="m", body=body)


async def test_queued_answers_are_served_then_written_together(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings())
    writes = Writes(store, max_bytes=1_000_000)
    stored: list[tuple[str, int]] = []
    writes.on_stored = lambda model, written, _evicted: stored.append((model, written))
    scope = unique("t")
    await store.put(scope, "warm", _entry("warm"), ttl=60)  # connected, script loaded
    assert store.write_pipe is not None
    before = store.write_pipe.writes
    for n in range(3):
        writes.add(scope, f"d{n}", _entry(f"answer {n}"), ttl=60, model="m")
    for n in range(3):  # served from the queue before the store has it (no await yet)
        queued = writes.get(scope, f"d{n}")
        assert queued is not None and queued.body == _entry(f"answer {n}").body
    assert writes.get(unique("other"), "d0") is None
    await wait_for(lambda: not writes.busy)
    assert store.write_pipe.writes - before == 1  # the three in one write
    assert [model for model, written in stored if written > 0] == ["m"] * 3
    for n in range(3):
        landed = await store.get(scope, f"d{n}")
        assert landed is not None and landed.body == _entry(f"answer {n}").body
        assert writes.get(scope, f"d{n}") is None


async def test_the_queue_is_bounded(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings(cache_max_entry_bytes=200))
    writes = Writes(store, max_bytes=140)
    scope = unique("t")
    writes.add(scope, "big", _entry("x" * 300), ttl=60, model="m")  # larger than any entry
    writes.add(scope, "a", _entry("a" * 40), ttl=60, model="m")
    writes.add(scope, "b", _entry("b" * 40), ttl=60, model="m")  # past the queue's bound
    assert writes.get(scope, "big") is None and writes.get(scope, "b") is None
    assert writes.get(scope, "a") is not None
    await wait_for(lambda: not writes.busy)
    assert await store.get(scope, "a") is not None
    assert await store.get(scope, "b") is None


async def test_a_deleted_tenants_queued_answers_are_never_written(redis) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(redis, CacheSettings())
    writes = Writes(store, max_bytes=1_000_000)
    gone, kept = unique("t"), unique("t")
    writes.add(gone, "d", _entry("gone"), ttl=60, model="m")
    writes.add(kept, "d", _entry("kept"), ttl=60, model="m")
    await writes.drop(gone, timeout=5)
    assert writes.get(gone, "d") is None
    await wait_for(lambda: not writes.busy)
    assert await store.get(gone, "d") is None
    assert await store.get(kept, "d") is not None
