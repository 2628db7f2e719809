"""The api's view of the workers through a silence. While the bucket answers, a dead worker
ages out after about one TTL (others beating or not); cut off from it (as while the bucket
elects a leader on a cluster) the view does not count the time cut off against the workers'
heartbeats, also once the bucket answers again (up to CREDIT_TTLS TTLs); a watch that went
quiet while the bucket answers does not age anyone out. Real nats-server."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmq.dispatcher import streams
from llmq.dispatcher.connection import disconnect
from llmq.dispatcher.registry import CREDIT_TTLS, WorkerRegistry
from llmq.embedded import EmbeddedNats
from llmq.schemas.registry import WorkerInfo, registry_encoder
from tests.stack import wait_for

TTL = 1.0


def _beat(worker_id: str) -> bytes:
    info = WorkerInfo(
        id=worker_id, models=["m"], backend="echo", capacity=1, heartbeat_at=time.time()
    )
    return registry_encoder.encode(info)


@pytest.mark.timeout(60)
async def test_a_cut_off_view_keeps_its_workers_one_more_ttl(own_nats: EmbeddedNats) -> None:
    nc = await nats.connect(own_nats.url)
    kv = await streams.workers_bucket(nc.jetstream(), ttl=30)
    registry = WorkerRegistry(nc.jetstream(), ttl=TTL)
    await registry.start()
    try:
        await kv.put("a", _beat("a"))
        await kv.put("b", _beat("b"))
        await wait_for(lambda: len(registry.workers_for("m")) == 2)

        # Others beat: `b` (silent) ages out after about one TTL, `a` stays.
        started = time.monotonic()
        while time.monotonic() - started < TTL * 1.6:
            await kv.put("a", _beat("a"))
            await asyncio.sleep(0.1)
        assert [w.id for w in registry.workers_for("m")] == ["a"]

        # Nobody beats, the bucket answers: the workers are gone; `a` ages out within ~1.1 TTL.
        last = await kv.get("a")
        await asyncio.sleep(TTL * 0.7)
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        await asyncio.sleep(TTL * 0.7)
        assert registry.workers_for("m") == []
        # A replay of the same entry (a re-opened watch) is no news: still none live.
        registry._on_worker("a", last.value)
        assert registry.workers_for("m") == []

        # Cut off (the server is gone): `a`, fresh when it went, outlives its TTL; once the
        # server is back, `a` still has the TTL it had left when the view was cut off, time
        # to beat again (as a worker does once the bucket has a leader again).
        await kv.put("a", _beat("a"))
        await wait_for(lambda: len(registry.workers_for("m")) == 1)
        beat_at = time.time()
        own_nats.kill()
        await asyncio.sleep(TTL * 2)
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        own_nats.restart()
        nc2 = await nats.connect(own_nats.url)
        try:
            await streams.workers_bucket(nc2.jetstream(), ttl=30)
            back = time.time()
            await wait_for(lambda: registry._contact_at > back, timeout=TTL * 3)
            assert [w.id for w in registry.workers_for("m")] == ["a"]
            # Nobody beats: `a` ages out about one TTL after its beat, plus the time cut off.
            await wait_for(lambda: registry.workers_for("m") == [], timeout=TTL * 2)
            assert time.time() - beat_at > TTL * 2.5
        finally:
            await disconnect(nc2)
    finally:
        await registry.stop()
        await disconnect(nc)


@pytest.mark.timeout(60)
async def test_cut_off_for_good_the_view_lets_its_workers_go(own_nats: EmbeddedNats) -> None:
    """The credit is bounded: a view cut off for good drops its workers after the TTL and
    CREDIT_TTLS more."""
    nc = await nats.connect(own_nats.url)
    kv = await streams.workers_bucket(nc.jetstream(), ttl=30)
    registry = WorkerRegistry(nc.jetstream(), ttl=TTL)
    await registry.start()
    try:
        await kv.put("a", _beat("a"))
        await wait_for(lambda: len(registry.workers_for("m")) == 1)
        own_nats.kill()
        await asyncio.sleep(TTL * (CREDIT_TTLS - 0.5))
        assert [w.id for w in registry.workers_for("m")] == ["a"]
        await wait_for(lambda: registry.workers_for("m") == [], timeout=TTL * 3)
    finally:
        await registry.stop()
        await disconnect(nc)


@pytest.mark.timeout(60)
async def test_a_quiet_watch_is_read_around(own_nats: EmbeddedNats) -> None:
    """The watch delivers nothing (its consumer died with a cluster node) while the bucket
    answers: the probe reads the workers' beats from the bucket, so none ages out."""
    nc = await nats.connect(own_nats.url)
    kv = await streams.workers_bucket(nc.jetstream(), ttl=30)
    registry = WorkerRegistry(nc.jetstream(), ttl=TTL)
    await registry.start()
    try:
        await kv.put("a", _beat("a"))
        await wait_for(lambda: len(registry.workers_for("m")) == 1)
        for follower in registry._followers:
            await follower.stop()  # the watch is gone; only the probe is left
        started = time.monotonic()
        while time.monotonic() - started < TTL * 3:
            await kv.put("a", _beat("a"))
            await asyncio.sleep(0.1)
            assert [w.id for w in registry.workers_for("m")] == ["a"]
        # And a worker that stops beating still ages out (the reads are no news).
        await wait_for(lambda: registry.workers_for("m") == [], timeout=TTL * 2)
    finally:
        await registry.stop()
        await disconnect(nc)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 50), st.floats(0, 10)), max_size=3),
    st.floats(0, 100),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_the_credit_is_the_sum_of_the_spells_cut_off(
    gaps: list[tuple[float, float]], contact: float, since: float, now: float
) -> None:
    """`_credit`'s shortcut (never cut off, in touch now: nothing) changes no answer."""
    registry = WorkerRegistry(None, TTL)  # type: ignore[arg-type]
    registry._gaps = [(start, start + length) for start, length in gaps]
    registry._contact_at = contact
    spells = [*registry._gaps, (contact + registry._slack, now)]
    cut = sum(max(0.0, end - max(start, since)) for start, end in spells)
    assert registry._credit(since, now) == min(cut, CREDIT_TTLS * TTL)
