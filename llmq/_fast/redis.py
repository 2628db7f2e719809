"""The redis-py gate: every shortcut into redis-py's private parts, on only for the redis-py
versions they were tested with (`GATE`; `llmq._fast` says how the gate works).

- `DirectWrite`: a packed command written at once, without redis-py's task per command;
- `FastBlockingPool`: a pool checkout and return without the condition and hooks while the
  pool is below its cap;
- `healthy` / `write_now`: what `api.tenancy.pipeline.ScriptPipe` (the auto-pipelining of the
  quota scripts) needs to write on a held connection; it runs only while the gate is open.

Shut, llmq uses redis-py's own connection writes, its `BlockingConnectionPool` and one
redis-py call per quota script.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.event import AsyncAfterConnectionReleasedEvent

from llmq._fast import Gate

GATE = Gate("redis-py", {"redis": ("8.2", "8.3")})
"""Tested with redis-py 8.2."""


class DirectWrite(AbstractConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """As redis-py's, without its task per command: redis-py writes and drains inside
        `asyncio.wait_for` (a new task each time) even when the write went straight out.
        A packed command on an open connection is written at once; only when the
        transport holds unsent bytes, or is closing, does redis-py's bounded drain (and
        its error handling) run."""
        writer = self._writer
        if (
            type(command) is list
            and writer is not None
            and self._reader is not None
            and not (check_health and self.health_check_interval)
            and not writer.transport.is_closing()
        ):
            writer.writelines(command)
            if writer.transport.get_write_buffer_size() == 0:
                return
            command = []
        await super().send_packed_command(command, check_health)


class FastBlockingPool(BlockingConnectionPool):
    """redis-py's blocking pool, with a checkout and a return that skip its condition, its
    timeout, its lock context and its observability hooks (~17 µs a command; llmq does not
    enable redis-py's metrics) while the pool is below its cap: then nobody can be waiting
    for a connection, so nobody needs waking. At the cap, redis-py's own way. A checked
    out connection is still connected and checked for stray data (`ensure_connection`);
    a returned one still reconnects if it must and fires the release event (re-auth)."""

    def _roomy(self) -> bool:
        in_use = getattr(self, "_in_use_connections", None)
        available = getattr(self, "_available_connections", None)
        if in_use is None or available is None or not hasattr(self, "ensure_connection"):
            return False
        if len(in_use) + len(available) >= self.max_connections - 1:
            return False
        return not getattr(self, "_in_maintenance", False) and self._dispatcher is not None

    @property
    def _dispatcher(self) -> Any:
        return getattr(self, "_event_dispatcher", None)  # redis-py >= 5.3

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if args or kwargs or not self._roomy() or not self._available_connections:
            return await super().get_connection(*args, **kwargs)
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if not self._roomy() or connection not in self._in_use_connections:
            return await super().release(connection)
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():
            await connection.disconnect()
        self._available_connections.append(connection)
        await self._dispatcher.dispatch_async(AsyncAfterConnectionReleasedEvent(connection))


def blocking_pool() -> type[BlockingConnectionPool]:
    """The pool class: the fast one while the gate is open, else redis-py's own."""
    return FastBlockingPool if GATE.open else BlockingConnectionPool


def healthy(conn: AbstractConnection) -> bool:
    """Connected, and the server has not closed it since its last reply (`CLIENT KILL`,
    a restart, an idle timeout): the check redis-py's pool makes at checkout."""
    writer, reader = getattr(conn, "_writer", None), getattr(conn, "_reader", None)
    return (
        writer is not None
        and reader is not None
        and not writer.transport.is_closing()
        and not reader.at_eof()
        and reader.exception() is None
    )


def write_now(conn: AbstractConnection, data: bytes) -> bool:
    """Write `data` without awaiting when `conn` is healthy (a transport buffers what the
    socket does not take at once; the reply's read is bounded by the socket timeout)."""
    writer = conn._writer
    if writer is None or not healthy(conn):
        return False
    writer.write(data)
    return True
