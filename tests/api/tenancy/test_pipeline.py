"""The admission's script calls auto-pipelined (api/tenancy/pipeline.py `ScriptPipe`), against
a real Valkey: concurrent calls share a write and each gets its own reply, in order; an
error reply (`NOSCRIPT`) stays its caller's; a connection killed or silent mid-batch fails
that batch's callers the way redis-py's path does, and the next call works."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmq.api.tenancy import Quota, QuotaBackendDown, Tenant, TenantStore, connect
from llmq.api.tenancy.pipeline import ScriptPipe
from llmq.api.tenancy.quota import Ending
from llmq.embedded import EmbeddedRedis
from tests.stack import refused_port, unique

pytestmark = pytest.mark.usefixtures("fast_paths_on")  # tests of the shortcuts themselves


async def _tenant(store: TenantStore, **limits: Any) -> str:
    name = unique("t")
    await store.create(Tenant(name=name, **limits))
    return name


def _pipe(quota: Quota) -> ScriptPipe:
    assert quota.pipe is not None
    return quota.pipe


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _pipe_client_id(admin: Redis, command: str) -> int:
    """The id of the connection Valkey sees running `command` (the pipe's, blocked)."""
    for _ in range(200):
        for client in await admin.client_list():
            if client.get("cmd") == command:
                return int(client["id"])
        await asyncio.sleep(0.01)
    raise AssertionError(f"no client is running {command}")


async def test_concurrent_reserves_share_a_write_and_each_gets_its_own_answer(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    tenant = await _tenant(store, rpm=1000, max_concurrent=30)
    pipe = _pipe(quota)
    await quota.reserve(tenant, "m", 1, 1, "warm")  # the pipe holds its connection
    writes, scripts = pipe.writes, await _evalsha_calls(redis)
    decisions = await asyncio.gather(
        *(quota.reserve(tenant, "m", 10 * i, 1000 + i, f"job-{i}") for i in range(40))
    )
    assert await _evalsha_calls(redis) - scripts == 40  # one script call each, no retry
    assert pipe.writes - writes <= 2  # the first at once, the other 39 together
    allowed = [(i, d) for i, d in enumerate(decisions) if d.allowed]
    assert len(allowed) == 29  # 30 slots, one taken by "warm"
    assert all(d.limit == "max_concurrent" for d in decisions if not d.allowed)
    for i, decision in allowed:  # each caller got the reply to its own call
        assert decision.reservation is not None and decision.reservation.job_id == f"job-{i}"
        assert decision.reservation.reserved_tokens == 10 * i + 1000 + i
    remaining = sorted(d.remaining_requests or 0 for _, d in allowed)
    assert remaining == sorted(set(remaining))  # each counted once, none twice
    assert await quota.inflight(tenant) == 30


async def test_replies_come_back_in_the_order_the_calls_were_made(
    quota: Quota, redis: Redis
) -> None:
    key = unique("pipe:n")
    pipe = _pipe(quota)
    results = await asyncio.gather(*(pipe.execute("INCR", key) for _ in range(100)))
    assert results == list(range(1, 101))
    many = await asyncio.gather(
        pipe.execute_many([("INCR", key), ("GET", key), ("INCRBY", key, 5)]),
        pipe.execute("INCR", key),
        pipe.execute_many([("HGET", key, "f"), ("INCR", key)]),  # WRONGTYPE: its own only
    )
    assert many[0] == [101, "101", 106] and many[1] == 107
    assert isinstance(many[2][0], ResponseError) and many[2][1] == 108
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipe.execute("HGET", key, "f")
    assert await pipe.execute("GET", key) == "108"
    await redis.delete(key)


async def test_a_lone_call_is_written_and_read_by_its_caller(quota: Quota) -> None:
    """Nothing in flight: the caller itself writes (before the loop turns) and reads its
    reply (no task in between): at concurrency 1 no loop iteration is added."""
    pipe = _pipe(quota)
    await pipe.execute("PING")  # holds a connection now
    loop = asyncio.get_running_loop()
    turned: list[str] = []
    loop.call_soon(turned.append, "turned")
    written_when: list[list[str]] = []
    write_queue = pipe._write_queue

    def spy() -> Any:
        written_when.append(list(turned))
        return write_queue()

    pipe._write_queue = spy  # type: ignore[method-assign]
    assert await pipe.execute("ECHO", "lone") == "lone"
    assert written_when == [[]]  # written before the loop turned
    assert pipe._owner is asyncio.current_task()  # read by the caller itself


async def test_a_script_flushed_mid_batch_is_loaded_again(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    """A `SCRIPT FLUSH` between the calls of one batch: the calls after it get `NOSCRIPT`,
    which each answers by loading the script and calling again; those before are done."""
    tenant = await _tenant(store, rpm=100)
    pipe = _pipe(quota)
    await quota.reserve(tenant, "m", 1, 1, "warm")
    scripts = await _evalsha_calls(redis)
    before = [quota.reserve(tenant, "m", 1, 1, f"a-{i}") for i in range(5)]
    flush = pipe.execute("SCRIPT", "FLUSH")
    after = [quota.reserve(tenant, "m", 1, 1, f"b-{i}") for i in range(5)]
    replies = await asyncio.gather(*before, flush, *after)
    assert replies[5] == "OK"
    decisions = [r for r in replies if not isinstance(r, str)]
    assert all(d.allowed for d in decisions)
    assert sorted(d.remaining_requests or 0 for d in decisions) == list(range(89, 99))
    # 10 in the batch (5 answered NOSCRIPT) and the 5 made again after loading
    assert await _evalsha_calls(redis) - scripts >= 15
    # A flushed release: the folded releases take the same way back.
    await redis.script_flush()
    ended = await quota.release_many([_ending(tenant, f"a-{i}") for i in range(5)])
    assert ended == [True] * 5
    with pytest.raises(NoScriptError):  # the pipe itself hands the reply over as it came
        await pipe.execute("EVALSHA", "0" * 40, 0)


def _ending(tenant: str, job_id: str) -> Ending:
    return Ending(tenant, "m", job_id, 1, 1)


async def test_a_connection_killed_mid_batch_fails_its_callers_and_the_next_call_works(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    """A batch (a blocking command, then 8 reserves, in one write) whose connection is
    killed: every caller of it gets what redis-py's path raises for a dropped connection;
    a call queued behind it goes out on a fresh connection, as does the next one."""
    tenant = await _tenant(store, rpm=100, max_concurrent=50)
    pipe = _pipe(quota)
    await quota.reserve(tenant, "m", 1, 1, "warm")
    first = asyncio.ensure_future(pipe.execute("PING"))  # in flight: the rest queue behind
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", unique("pipe:never"), 30))
    batch = [asyncio.ensure_future(quota.reserve(tenant, "m", 1, 1, f"j-{i}")) for i in range(8)]
    killed = await _pipe_client_id(redis, "blpop")
    assert await first == "PONG"
    behind = asyncio.ensure_future(quota.reserve(tenant, "m", 1, 1, "behind"))
    assert await redis.client_kill_filter(_id=killed) == 1
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(blocked, 10)
    for waiter in batch:
        with pytest.raises(QuotaBackendDown) as caught:
            await asyncio.wait_for(waiter, 10)
        assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert (await asyncio.wait_for(behind, 10)).remaining_requests == 98  # the 8 never ran
    decision = await quota.reserve(tenant, "m", 1, 1, "after")
    assert decision.allowed and decision.remaining_requests == 97
    ids = {int(c["id"]) for c in await redis.client_list()}
    assert killed not in ids
    assert await quota.inflight(tenant) == 3


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    """As redis-py's pool checks at checkout: a held connection the server closed between
    batches (an idle timeout, `CLIENT KILL`) is reconnected before the next write."""
    tenant = await _tenant(store, rpm=100)
    pipe = _pipe(quota)
    name = unique("pipe-idle").replace("-", "_")
    await pipe.execute("CLIENT", "SETNAME", name)
    held = pipe._conn
    assert held is not None
    ids = [int(c["id"]) for c in await redis.client_list() if c.get("name") == name]
    assert len(ids) == 1 and await redis.client_kill_filter(_id=ids[0]) == 1
    for _ in range(500):  # the loop sees the connection's end of file
        if held._reader is None or held._reader.at_eof():
            break
        await asyncio.sleep(0.01)
    decision = await quota.reserve(tenant, "m", 1, 1, "after-idle-kill")
    assert decision.allowed and decision.remaining_requests == 99


async def test_a_silent_server_times_the_batch_out_and_the_next_call_works(
    redis_server: EmbeddedRedis, store: TenantStore
) -> None:
    client = connect(redis_server.url, timeout=0.5)
    try:
        tenant = await _tenant(store, rpm=100)
        quota = Quota(client)
        pipe = _pipe(quota)
        blocked = asyncio.ensure_future(pipe.execute("BLPOP", unique("pipe:never"), 5))
        waiter = asyncio.ensure_future(quota.reserve(tenant, "m", 1, 1, "late"))
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(blocked, 10)
        with pytest.raises(QuotaBackendDown):
            await asyncio.wait_for(waiter, 10)
        decision = await quota.reserve(tenant, "m", 1, 1, "next")
        assert decision.allowed and decision.remaining_requests == 99
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_leaves_the_others_their_replies(
    store: TenantStore, quota: Quota
) -> None:
    tenant = await _tenant(store, rpm=100)
    pipe = _pipe(quota)
    await quota.reserve(tenant, "m", 1, 1, "warm")
    calls = [asyncio.ensure_future(quota.reserve(tenant, "m", 1, 1, f"c-{i}")) for i in range(10)]
    await asyncio.sleep(0)  # every call made
    calls[3].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(d.allowed for i, d in enumerate(done) if i != 3)  # type: ignore[union-attr]
    # The connection carries on in step (a reply read for the cancelled call, if it was
    # sent, went nowhere): the next answers are the right ones.
    assert await pipe.execute("ECHO", "in step") == "in step"
    after = await quota.reserve(tenant, "m", 1, 1, "next")
    assert after.remaining_requests == 100 - await quota.inflight(tenant)


async def test_a_first_caller_cancelled_mid_read_hands_the_read_over(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    """The caller that wrote a batch reads its replies itself; cancelled halfway (one
    reply read, one awaited), it leaves the rest to a task: the calls queued behind are
    answered and the connection stays in step."""
    tenant = await _tenant(store, rpm=100)
    pipe = _pipe(quota)
    await quota.reserve(tenant, "m", 1, 1, "warm")
    key = unique("pipe:list")
    leader = asyncio.ensure_future(
        pipe.execute_many([("ECHO", "a"), ("BLPOP", key, 30), ("ECHO", "b")])
    )
    queued = [asyncio.ensure_future(quota.reserve(tenant, "m", 1, 1, f"q-{i}")) for i in range(5)]
    await _pipe_client_id(redis, "blpop")
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await redis.rpush(key, "x")  # the blocked command answers: the task reads on
    decisions = await asyncio.wait_for(asyncio.gather(*queued), 10)
    assert sorted(d.remaining_requests or 0 for d in decisions) == list(range(94, 99))
    assert await pipe.execute("ECHO", "in step") == "in step"
    assert await redis.llen(key) == 0


async def test_redis_down_fails_every_waiter_quickly() -> None:
    down = connect(f"redis://127.0.0.1:{refused_port()}/0", timeout=0.5)
    try:
        quota = Quota(down)
        calls = [quota.reserve("t", "m", 1, 1, f"j-{i}") for i in range(20)]
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(o, QuotaBackendDown) for o in outcomes)
    finally:
        await down.aclose()


def test_a_cluster_keeps_redis_pys_path() -> None:
    cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert not ScriptPipe.serves(cluster)
    assert Quota(cluster).pipe is None and Quota(cluster).release_pipe is None
    sentinel = connect("redis+sentinel://127.0.0.1:1/mymaster")  # the pool gives the master
    assert ScriptPipe.serves(sentinel) and Quota(sentinel).pipe is not None
    single = Redis(single_connection_client=True)
    assert not ScriptPipe.serves(single)


async def test_a_reserve_never_waits_behind_a_release_batch_in_flight(
    store: TenantStore, quota: Quota, redis: Redis
) -> None:
    """Releases have their own pipe (connection): one stuck in flight (here a blocked
    command ahead of them) holds up no reserve, and the releases queued behind it go
    out together once it answers."""
    tenant = await _tenant(store, rpm=100, max_concurrent=50)
    held = [await quota.reserve(tenant, "m", 1, 1, f"r-{i}") for i in range(3)]
    assert all(d.allowed for d in held)
    releases = quota.release_pipe
    assert releases is not None and releases is not quota.pipe
    key = unique("pipe:list")
    blocked = asyncio.ensure_future(releases.execute("BLPOP", key, 30))
    ended = asyncio.ensure_future(quota.release_many([_ending(tenant, f"r-{i}") for i in range(3)]))
    await _pipe_client_id(redis, "blpop")
    decision = await asyncio.wait_for(quota.reserve(tenant, "m", 1, 1, "meanwhile"), 5)
    assert decision.allowed and not ended.done()
    await redis.rpush(key, "x")
    assert await asyncio.wait_for(blocked, 10) == [key, "x"]
    assert await asyncio.wait_for(ended, 10) == [True, True, True]
    assert await quota.inflight(tenant) == 1
