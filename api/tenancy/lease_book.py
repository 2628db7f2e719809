"""`lease_book.lua`'s keys and arguments for a job admitted from a lease (docs/routing.md),
and the one script that books such a job: `lease_book.lua` then `release.lua`."""

from __future__ import annotations

import re
from importlib import resources

from redis.asyncio import Redis

from llmq.api.tenancy.errors import backend_guard
from llmq.api.tenancy.leases import ticket_of
from llmq.api.tenancy.periods import periods
from llmq.api.tenancy.script_keys import key_scope
from llmq.schemas import names

BOOKED_TTL = 86_400_000 + 900_000
"""Ms a booked job's marker (and its record) is kept: longer than any report comes late."""

_FOLD = """-- llmq lease release: lease_book.lua, then release.lua, in one atomic call.
-- KEYS: lease_book.lua's (ARGV[1] of them), then release.lua's
-- ARGV[2] how many of the rest are lease_book.lua's; release.lua's follow them
local function lease_book(KEYS, ARGV)
%s
end
local held
local function release(KEYS, ARGV)
%s
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local bk, ba, rk, ra = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then bk[i] = KEYS[i] else rk[i - nk] = KEYS[i] end
end
for i = 3, #ARGV do
  if i - 2 <= na then ba[i - 2] = ARGV[i] else ra[i - 2 - na] = ARGV[i] end
end
held = lease_book(bk, ba)
return release(rk, ra)
"""
_RECORD = re.compile(r"-- <record>.*?-- </record>\n", re.S)
_FIELDS = re.compile(r"redis\.call\('HMGET', KEYS\[1\],([^)]*)\)")
_HELD = """-- the record lease_book.lua made (nil: the job was booked before): its slot is out of
-- the in-flight sets already, and there is no hash to read or delete
if not held then return '0|0' end
local r = {%s}
"""


def folded_script() -> str:
    """One script that books a lease-admitted job: the record (`lease_book.lua`) and the
    booking (`release.lua`) in one call, so a leased job costs one script call, as a
    directly reserved one does. The record goes from one to the other as a Lua table:
    `release.lua`'s read of it (its `<record>` block) becomes a read of that table, field
    for field. Its arguments: `fold_args`."""
    text = resources.files("llmq.api.tenancy")
    release = text.joinpath("release.lua").read_text()
    block = _RECORD.search(release)
    fields = _FIELDS.search(block.group(0)) if block else None
    if block is None or fields is None:
        raise RuntimeError("release.lua: no <record> block reading the reservation hash")
    names_ = [name.strip().strip("'") for name in fields.group(1).split(",")]
    names_ += ["hold", "khold"]  # r[18], r[19]: holds lease_book.lua left to release.lua
    read = _HELD % ", ".join(f"held['{name}']" for name in names_ if name)
    folded_release = release[: block.start()] + read + release[block.end() :]
    return _FOLD % (text.joinpath("lease_book.lua").read_text(), folded_release)


def fold_args(
    book: tuple[list[str], list[str | int]], release: tuple[list[str], list[str | int]]
) -> tuple[list[str], list[str | int]]:
    """`folded_script`'s keys and arguments from `book_call`'s and `release.lua`'s."""
    (bk, ba), (rk, ra) = book, release
    return [*bk, *rk], [len(bk), len(ba), *ba, *ra]


def book_call(
    tenant: str, model: str, job_id: str, ticket: str
) -> tuple[list[str], list[str | int]]:
    """The call that makes the job's reservation record, once, as `quota.lua` would have:
    on the day and month the job was admitted."""
    t = ticket_of(ticket)
    p = periods(t.at_ms / 1000)
    own = key_scope(tenant, t.key_id, p.day, p.month)
    keys = [
        names.reservation_key(tenant, job_id),
        names.reservation_key(tenant, job_id) + "#B",
        names.PRICES_KEY,
        names.rate_key(tenant),
        names.day_quota_key(tenant, p.day),
        names.month_quota_key(tenant, p.month),
        *own[1:],
        names.inflight_key(tenant),
        own[0],
    ]
    if t.lease != "-":
        keys.append(names.reservation_key(tenant, t.lease) + "#L")
    day_expiry = int(p.day_end * 1000) + 86_400_000
    month_expiry = int(p.month_end * 1000) + 86_400_000
    args: list[str | int] = [job_id, model, t.prompt, t.key_id, t.user, t.tok_t, t.key_tok_t]
    args += [day_expiry, month_expiry, BOOKED_TTL, t.at_ms, t.max_tokens, t.slot]
    return keys, args


async def extend_slots(redis: Redis, taken: list[tuple[str, str, str]], until: float) -> None:
    """Push the slots jobs took from leases, (tenant, key id, member), to `until` (unix s)
    in both in-flight sets, one round trip; a slot already reaped is not made again."""
    if not taken:
        return
    ms = int(until * 1000)
    pipe = redis.pipeline(transaction=False)
    for tenant, key_id, member in taken:
        sets = [names.inflight_key(tenant)]
        if key_id:
            sets.append(f"{names.key_quota_prefix(tenant, key_id)}:inflight")
        for zset in sets:
            pipe.zadd(zset, {member: ms}, xx=True, gt=True)
            pipe.pexpireat(zset, ms + 60_000, gt=True)
    with backend_guard():
        await pipe.execute()


async def drop_slots(redis: Redis, gone: list[tuple[str, str, str]]) -> None:
    """Take the free slots of ended leases, (tenant, key id, member), out of the tenant's
    and the key's in-flight sets, in one round trip: one `ZREM` per set."""
    if not gone:
        return
    sets: dict[str, list[str]] = {}
    for tenant, key_id, member in gone:
        sets.setdefault(names.inflight_key(tenant), []).append(member)
        if key_id:
            sets.setdefault(f"{names.key_quota_prefix(tenant, key_id)}:inflight", []).append(member)
    pipe = redis.pipeline(transaction=False)
    for zset, members in sets.items():
        pipe.zrem(zset, *members)
    with backend_guard():
        await pipe.execute()


class LeaseEnds:
    """`lease_end.lua`: give back what ended budget leases hold beyond what was spent."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(
            resources.files("llmq.api.tenancy").joinpath("lease_end.lua").read_text()
        )

    async def close(self, closed: list[tuple[str, str, int, float]]) -> None:
        """(tenant, lease's job id, tokens spent, USD spent) each, in one round trip."""
        if not closed:
            return
        pipe = self._redis.pipeline(transaction=False)
        for tenant, job_id, tokens, usd in closed:
            record = names.reservation_key(tenant, job_id) + "#L"
            await self._script(keys=[record], args=[tokens, repr(usd)], client=pipe)
        with backend_guard():
            await pipe.execute()
