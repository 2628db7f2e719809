"""The response cache's entries in Valkey/Redis, under their own prefix (`llmq:cache:`),
bounded per tenant scope (bytes and entries, `CacheSettings`): a write past a bound evicts
the scope's entries closest to expiring, in the same atomic script (`put.lua`). Every entry
expires with its TTL. docs/benchmarks.md says why Valkey and not a JetStream bucket.

Entries are msgpack (`Entry`), sealed with AES-GCM when `LLMQ_CACHE_KEY` is set (`seal`).
A store that is away or slow never fails a request: a lookup then misses, a write is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from llmq.api.cache.seal import Seal
from llmq.api.tenancy.pipeline import ScriptPipe
from llmq.schemas import names
from llmq.schemas.settings import CacheSettings

log = logging.getLogger(__name__)

PURGE_BATCH = 500


class Entry(msgspec.Struct, array_like=True):
    """One cached answer, as the job gave it."""

    kind: str
    stream: bool
    created: float
    """Unix seconds it was stored (`x-llmq-cache-age`)."""
    model: str
    frames: list[bytes] = []
    """A streamed answer: each chunk frame as relayed (several chunks may share one)."""
    body: bytes = b""
    """A whole answer: the JSON body."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


@dataclass(frozen=True, slots=True)
class Stored:
    """What a write did: bytes stored (0: not stored, too large), entries evicted, the
    scope's bytes after."""

    written: int
    evicted: int
    size: int


NOT_STORED = Stored(0, 0, 0)


class CacheStore:
    def __init__(self, redis: Redis, settings: CacheSettings) -> None:
        """`redis`: a client that returns bytes (`decode_responses=False`)."""
        self.redis = redis
        self.settings = settings
        self.seal = Seal(settings.cache_key)
        self._put = redis.register_script(
            resources.files("llmq.api.cache").joinpath("put.lua").read_text()
        )
        piped = ScriptPipe.serves(redis)
        self.pipe = ScriptPipe(redis) if piped else None
        """Lookups, auto-pipelined as the quota's calls are (a quarter of redis-py's CPU per
        command); None in a Cluster."""
        self.write_pipe = ScriptPipe(redis) if piped else None
        """Writes, on a connection of their own: a lookup never waits behind a write."""

    async def _command(self, *command: Any, pipe: ScriptPipe | None = None) -> Any:
        if pipe is None:
            return await self.redis.execute_command(*command)
        return await pipe.execute(*command)

    async def get(self, scope: str, digest: str) -> Entry | None:
        key = names.cache_entry_key(scope, digest)
        try:
            raw = await self._command("GET", key, pipe=self.pipe)
        except (RedisError, OSError, UnicodeDecodeError) as exc:
            log.warning("response cache unavailable: %s", exc)
            return None
        if raw is None:
            return None
        opened = self.seal.open(raw if isinstance(raw, bytes) else raw.encode(), key.encode())
        if opened is None:
            return None
        try:
            return _decoder.decode(opened)
        except msgspec.DecodeError:
            return None

    async def put(self, scope: str, digest: str, entry: Entry, ttl: float) -> Stored:
        return (await self.put_many([(scope, digest, entry, ttl)]))[0]

    async def put_many(self, items: list[tuple[str, str, Entry, float]]) -> list[Stored]:
        """Store each (scope, digest, entry, ttl) in one pipelined write: what each write did
        (nothing stored for one too large, or when the store is away)."""
        results = [NOT_STORED] * len(items)
        calls: list[tuple[int, int, tuple[Any, ...]]] = []
        for at, (scope, digest, entry, ttl) in enumerate(items):
            made = self._put_call(scope, digest, entry, ttl)
            if made is not None:
                calls.append((at, *made))
        if not calls:
            return results
        try:
            replies = await self._scripts([call for _at, _size, call in calls])
        except (RedisError, OSError) as exc:
            log.warning("response cache write lost: %s", exc)
            return results
        for (at, size, _call), raw in zip(calls, replies, strict=True):
            if isinstance(raw, Exception):
                log.warning("response cache write lost: %s", raw)
                continue
            stored, evicted, total = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
            results[at] = Stored(size if stored == "1" else 0, int(evicted), int(total))
        return results

    def _put_call(
        self, scope: str, digest: str, entry: Entry, ttl: float
    ) -> tuple[int, tuple[Any, ...]] | None:
        """(bytes of the stored value, the `put.lua` call); None when it is not stored."""
        key = names.cache_entry_key(scope, digest)
        value = self.seal.close(_encoder.encode(entry), key.encode())
        s = self.settings
        if len(value) > s.cache_max_entry_bytes or ttl <= 0:
            return None
        keys = (key, names.cache_index_key(scope), names.cache_sizes_key(scope))
        args = (
            digest,
            value,
            max(1, int(ttl * 1000)),
            int(time.time() * 1000),
            s.cache_tenant_max_bytes,
            s.cache_tenant_max_entries,
        )
        return len(value), ("EVALSHA", self._put.sha, len(keys), *keys, *args)

    async def _scripts(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of `EVALSHA` calls (an error reply as its exception), the script
        loaded first when the server does not know it (a restarted Valkey)."""
        replies = await self._many(calls)
        unknown = [at for at, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            await self._command("SCRIPT", "LOAD", self._put.script, pipe=self.write_pipe)
            again = await self._many([calls[at] for at in unknown])
            for at, reply in zip(unknown, again, strict=True):
                replies[at] = reply
        return replies

    async def _many(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        if self.write_pipe is not None:
            return await self.write_pipe.execute_many(calls)
        replies: list[Any] = []
        for call in calls:
            try:
                replies.append(await self.redis.execute_command(*call))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def purge(self, scope: str) -> dict[str, int]:
        """Delete every entry of a tenant scope (a deleted tenant); how many keys went
        (nothing said when there were none)."""
        deleted = 0
        batch: list[bytes | str] = []
        async for key in self.redis.scan_iter(match=names.cache_scope_pattern(scope), count=500):
            batch.append(key)
            if len(batch) >= PURGE_BATCH:
                deleted += await self.redis.delete(*batch)
                batch = []
        if batch:
            deleted += await self.redis.delete(*batch)
        return {"cache_keys": deleted} if deleted else {}
