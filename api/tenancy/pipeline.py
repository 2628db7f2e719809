"""Auto-pipelining of the admission's script calls: one write, one connection, many callers.

Every request runs `quota.lua` (the reserve) and, later, `release.lua`; through redis-py each
call is a pool checkout and return, a `Retry` wrapper, observability hooks and one write
syscall (~a quarter of the api's CPU at c=32). `ScriptPipe` sends them itself: the calls that
arrive while a batch is being written or read (its first caller's, made in the same
event-loop iteration, included) go out together as ONE write on ONE connection, and the
replies (RESP answers in order) are read back and handed to each caller's future. When
nothing is in flight a call is written at once and its reply read by its caller: at
concurrency 1 nothing waits for a batch to fill and no loop iteration is added.

Failures keep redis-py's behaviour: an error reply (`NOSCRIPT`, a script error) goes to its
own caller only; a connection that fails (Redis down, `CLIENT KILL`, a timeout, a Sentinel
master demoted to a replica) fails every caller whose command was on it with the error
redis-py raises, is disconnected (never reused with replies unread) and given back to the
pool; the calls queued behind, and the next, take a fresh one. A batch's reads are bounded
by the client's `socket_timeout`.

For one Redis/Valkey server or a Sentinel-watched master (the pool hands out the master);
a Cluster client keeps redis-py's per-command path (`ScriptPipe.serves`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmq._fast import redis as fast_redis
from llmq.api.tenancy.client import is_cluster


class _Call:
    """One caller's commands, packed, the replies read so far, and the future that gets
    them all."""

    __slots__ = ("count", "data", "future", "replies")

    def __init__(self, data: bytes, count: int, future: asyncio.Future[list[Any]]) -> None:
        self.data = data
        self.count = count
        self.future = future
        self.replies: list[Any] = []


class ScriptPipe:
    """Pipelines the commands given to `execute`/`execute_many` on one connection of
    `redis`'s pool, held while the pipe is in use (`serves` says whether `redis` can)."""

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        self._pool = pool
        self._packer: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        """Never connected: packs commands with the client's encoding (hiredis or Python)."""
        self._conn: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Call] = []
        """Calls not written yet: they go out together after the batch in flight."""
        self._busy = False
        """A batch is in flight: its first caller, or the reader task, reads its replies."""
        self._owner: asyncio.Task[Any] | None = None
        """The task reading now (a safety net: one that ended leaves nobody waiting)."""
        self.writes = 0
        """Writes (batches) sent: with `calls`, how much was shared (observability, tests)."""
        self.calls = 0

    @staticmethod
    def serves(redis: Any) -> bool:
        """`redis` has one pool of interchangeable connections to one server (or to the
        master Sentinel names): not a Cluster, not a single-connection client; and the
        redis-py gate is open (`llmq._fast.redis`: this writes on redis-py's connections)."""
        return (
            fast_redis.GATE.open
            and not is_cluster(redis)
            and not getattr(redis, "single_connection_client", False)
            and hasattr(redis, "connection_pool")
        )

    async def execute(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised, as redis-py does."""
        reply = (await self._request((args,)))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The commands' replies in order, an error reply as its exception (not raised); a
        failed connection raises for all of them."""
        if not commands:
            return []
        return await self._request(commands)

    async def _request(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Nothing in flight: the caller writes at once (no loop iteration before the write)
        and reads the replies itself (none after); else it waits for its future."""
        call = self._enqueue(commands)
        if self._busy:
            return await call.future
        inflight = self._write_queue()
        if inflight is None:  # no healthy connection: a task takes one (a checkout may wait)
            self._spawn(deque())
            return await call.future
        await self._lead(inflight, call)
        return call.future.result()

    def _enqueue(self, commands: Sequence[tuple[Any, ...]]) -> _Call:
        pack = self._packer.pack_command
        data = b"".join(chunk for args in commands for chunk in pack(*args))
        loop = asyncio.get_running_loop()
        call = _Call(data, len(commands), loop.create_future())
        self.calls += 1
        if self._loop is not loop:  # a connection, calls or a reader of another loop
            self._conn, self._queue, self._loop = None, [], loop
            self._busy, self._owner = False, None
        self._queue.append(call)
        if self._busy and (self._owner is None or self._owner.done()):
            self._busy = False  # its reader ended without saying so: nobody waits forever
        return call

    def _write_queue(self) -> deque[_Call] | None:
        """Mark a batch in flight and write the queue now on the held connection; None
        (the queue kept) when there is no healthy connection to write on."""
        self._busy = True
        conn = self._conn
        calls = [c for c in self._queue if not c.future.done()]  # given up: not sent
        if (
            conn is None
            or not calls
            or not fast_redis.write_now(conn, b"".join(c.data for c in calls))
        ):
            return None
        self.writes += 1
        self._queue = []
        return deque(calls)

    def _spawn(self, inflight: deque[_Call]) -> None:
        self._owner = asyncio.get_running_loop().create_task(
            self._run(inflight), name="redis-script-pipe"
        )

    async def _lead(self, inflight: deque[_Call], own: _Call) -> None:
        """The first caller reads the replies of the batch it wrote, then hands what
        queued meanwhile to the reader task. Cancelled mid-read (its client went away),
        it leaves the rest of the read to that task: the connection stays in step."""
        self._owner = asyncio.current_task()
        try:
            try:
                await _read_batch(self._conn, inflight)
            except Exception as exc:
                await self._discard(inflight, exc)
        except asyncio.CancelledError:
            own.future.cancel()  # nobody waits for it now
            self._spawn(inflight)  # reads what is left, then writes what queued
            raise
        if self._queue:
            self._spawn(deque())
        else:
            self._busy = False  # no await from the check above to here

    async def _run(self, inflight: deque[_Call]) -> None:
        """Read the replies of the batch in flight; then write what queued meanwhile as one
        batch and read that; until nothing is left. Never cancelled by a caller: a caller
        that gives up only stops waiting for its future."""
        try:
            while True:
                batch = [c for c in self._queue if not c.future.done()]  # given up: unsent
                self._queue = []
                if batch:
                    try:
                        await self._send(b"".join(c.data for c in batch))
                    except Exception as exc:  # not connected, or the write failed
                        inflight += batch
                        await self._discard(inflight, exc)
                        continue
                    inflight += batch
                if not inflight:
                    self._busy = False  # no await from the check above to here
                    return
                try:
                    await _read_batch(self._conn, inflight)
                except Exception as exc:
                    await self._discard(inflight, exc)
        except BaseException:  # cancelled (the loop is closing): nobody may wait forever
            self._busy = False
            gone = RedisConnectionError("the Redis pipeline was stopped")
            _fail([*inflight, *self._queue], gone)
            self._queue = []
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(BaseException):
                    await conn.disconnect(nowait=True)
            raise

    async def _send(self, data: bytes) -> None:
        """Write one batch on the held connection; take one from the pool, or reconnect a
        dropped one, first when needed (redis-py's connect: AUTH, SELECT, Sentinel's master)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._pool.get_connection()
        elif fast_redis.write_now(conn, data):
            self.writes += 1
            return
        if not fast_redis.healthy(conn):
            await conn.disconnect(nowait=True)
        await conn.send_packed_command([data], check_health=False)
        self.writes += 1

    async def _discard(self, inflight: deque[_Call], exc: Exception) -> None:
        """The connection failed: every call on it fails with `exc`, and it is closed
        (replies may be unread) and given back."""
        _fail(inflight, exc)
        inflight.clear()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self._pool.release(conn)


async def _read_batch(conn: AbstractConnection | None, calls: deque[_Call]) -> None:
    """Read the replies of `calls` in order and hand each caller its own, taking each call
    off `calls` once complete (a cancelled read resumes where it stopped: nothing read is
    lost, the parser keeps a partial reply). One deadline (the client's `socket_timeout`)
    for the whole batch rather than one timer per reply. An error reply is a reply (the
    connection stays usable); anything else (a dropped or silent connection) raises, and
    the caller discards the connection."""
    if conn is None:
        raise RedisConnectionError("the Redis pipeline has no connection")
    read = conn.read_response
    try:
        async with asyncio.timeout(conn.socket_timeout):
            while calls:
                call = calls[0]
                replies = call.replies
                while len(replies) < call.count:
                    try:
                        replies.append(await read(timeout=math.inf, disconnect_on_error=False))
                    except ResponseError as exc:
                        replies.append(exc)
                calls.popleft()
                if not call.future.done():  # its caller may have given up
                    call.future.set_result(replies)
    except TimeoutError as exc:  # asyncio's: redis-py's own, as its reads raise it
        raise RedisTimeoutError(f"Timeout reading from {_where(conn)}") from exc


def _where(conn: AbstractConnection) -> str:
    return f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"


def _fail(calls: Iterable[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(exc)
