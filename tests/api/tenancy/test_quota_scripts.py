"""What `quota.lua` and `release.lua` now do only when needed, against a real Valkey: an
expiry is set in the call that makes a counter (not on every request), the reconciles share
one EXISTS (and still skip a counter that expired), end users past the cap share one row,
and a stale slot is reaped when a scope's count reaches its limit."""

from __future__ import annotations

import re
import time
from importlib import resources

import msgspec
import pytest
from redis.asyncio import Redis

from llmq.api.tenancy import KeySettings, Price, Quota, Tenant, TenantStore
from llmq.api.tenancy.models import ApiKey
from llmq.api.tenancy.periods import periods
from llmq.schemas import names

NOW = (int(time.time()) // 86400) * 86400 + 43_200.0 + 86_400
"""Noon UTC tomorrow: mid-day and mid-minute, and every expiry the scripts derive from it is
in the future however late in the session a test runs."""
DAY_MS = 86_400_000


async def _tenant_and_key(store: TenantStore, name: str, **key_limits: object) -> str:
    """A tenant with budgets, a priced model `m`; returns the id of a key of it."""
    await store.create(
        Tenant(name=name, rpm=1000, tpm=10**6, daily_tokens=10**6, monthly_tokens=10**7)
    )
    await store.set_price(f"m-{name}", Price(input_per_1m=1.0, output_per_1m=2.0))
    _, key = await store.create_key(name, settings=KeySettings(**key_limits))  # type: ignore[arg-type]
    return key.id


def _counters(tenant: str, key_id: str) -> dict[str, tuple[str, int]]:
    """Day and month quota hashes of the tenant and of its key, with the expiry each must
    have (unix ms)."""
    p = periods(NOW)
    prefix = names.key_quota_prefix(tenant, key_id)
    day, month = _ms(p.day_end) + DAY_MS, _ms(p.month_end) + DAY_MS
    return {
        "day": (names.day_quota_key(tenant, p.day), day),
        "month": (names.month_quota_key(tenant, p.month), month),
        "key day": (f"{prefix}:d:{p.day}", day),
        "key month": (f"{prefix}:m:{p.month}", month),
    }


async def test_counters_get_their_expiry_in_the_call_that_makes_them(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    # The key has no limits of its own: its counters are written without being read first.
    key_id = await _tenant_and_key(store, tenant_name)
    model = f"m-{tenant_name}"
    d = await quota.reserve(tenant_name, model, 10, 20, "j1", now=NOW, key_id=key_id, user="u")
    assert d.allowed
    for what, (key, expiry) in _counters(tenant_name, key_id).items():
        assert await redis.pexpiretime(key) == expiry, what
        assert await redis.hget(key, "tok") == "30", what
    assert await redis.pttl(names.inflight_key(tenant_name)) > 0

    assert await quota.release(tenant_name, model, "j1", 10, 5, now=NOW)
    p = periods(NOW)
    usage_expiry = _ms(p.day_end + 400 * 86_400)
    for by in ("key", "user"):
        assert await redis.pexpiretime(names.usage_by_key(tenant_name, p.day, by)) == usage_expiry
    assert await redis.pexpiretime(names.usage_key(tenant_name, p.day)) == usage_expiry
    # Reconciled to the real 15 tokens, expiries untouched.
    for what, (key, expiry) in _counters(tenant_name, key_id).items():
        assert await redis.hget(key, "tok") == "15", what
        assert await redis.pexpiretime(key) == expiry, what


async def test_an_existing_counter_keeps_its_expiry(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    """Only the call that makes a counter sets its expiry: later requests write the counter
    and leave the expiry as it is (which is the one that call set, since the expiry comes
    from the day or month in the counter's name)."""
    key_id = await _tenant_and_key(store, tenant_name, daily_tokens=10**6, rpm=100)
    model = f"m-{tenant_name}"
    assert (await quota.reserve(tenant_name, model, 1, 1, "j1", now=NOW, key_id=key_id)).allowed
    assert await quota.release(tenant_name, model, "j1", 1, 1, now=NOW, cached_tokens=0)
    marked = _ms(NOW) + 7 * DAY_MS + 123  # an expiry no script would set
    p = periods(NOW)
    usage = names.usage_key(tenant_name, p.day)
    watched = [key for key, _ in _counters(tenant_name, key_id).values()] + [usage]
    for key in watched:
        assert await redis.pexpireat(key, marked)
    assert (await quota.reserve(tenant_name, model, 1, 1, "j2", now=NOW, key_id=key_id)).allowed
    assert await quota.release(tenant_name, model, "j2", 1, 1, now=NOW)
    for key in watched:
        assert await redis.pexpiretime(key) == marked, key
    assert await redis.hget(usage, f"req:{model}") == "2"

    # The next day's counters are new ones: they get the next day's expiry.
    later = NOW + 86_400
    assert (await quota.reserve(tenant_name, model, 1, 1, "j3", now=later, key_id=key_id)).allowed
    q = periods(later)
    day = names.day_quota_key(tenant_name, q.day)
    assert await redis.pexpiretime(day) == _ms(q.day_end) + DAY_MS


async def test_reconcile_skips_a_counter_that_expired(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    """One EXISTS covers every counter a release corrects; when one of them is gone, only
    that one is skipped (not made again without an expiry), the others are corrected."""
    key_id = await _tenant_and_key(store, tenant_name, tpm=10**6, monthly_tokens=10**6)
    model = f"m-{tenant_name}"
    assert (await quota.reserve(tenant_name, model, 100, 400, "j", now=NOW, key_id=key_id)).allowed
    counters = _counters(tenant_name, key_id)
    gone = [counters["day"][0], names.rate_key(tenant_name)]
    assert await redis.delete(*gone) == 2
    assert await quota.release(tenant_name, model, "j", 100, 50, now=NOW)
    assert await redis.exists(*gone) == 0
    for what in ("month", "key day", "key month"):
        assert await redis.hget(counters[what][0], "tok") == "150", what
    # Reserved 100 in + 400 out = 900 µUSD, used 100 in + 50 out = 200 µUSD.
    month_usd = await redis.hget(counters["month"][0], "usd")
    assert float(month_usd or 0) == pytest.approx(200e-6)
    # The key's rate was corrected: 350 tokens of 10**6 per minute given back.
    key_rate = await redis.hget(f"{names.key_quota_prefix(tenant_name, key_id)}:rate", "tok")
    assert float(key_rate or 0) == pytest.approx(_ms(NOW) + 150 * 60_000 / 10**6)


async def test_end_users_past_the_cap_share_one_row(
    store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    quota = Quota(redis, max_users_per_day=1)
    await store.create(Tenant(name=tenant_name))
    rows = names.usage_by_key(tenant_name, periods(NOW).day, "user")
    for i, user in enumerate(["alice", "bob", "alice", "carol", "bob"]):
        job = f"j{i}"
        assert (await quota.reserve(tenant_name, "m", 3, 4, job, now=NOW, user=user)).allowed
        assert await quota.release(tenant_name, "m", job, 3, 2, now=NOW)
    booked = await redis.hgetall(rows)
    assert {f: v for f, v in booked.items() if f.startswith("req:")} == {
        "req:alice": "2",
        "req:(other)": "3",
    }
    assert booked["#users"] == "1"
    assert booked["in:(other)"] == "9" and booked["out:alice"] == "4"
    assert await redis.pexpiretime(rows) == _ms(periods(NOW).day_end + 400 * 86_400)


async def test_no_end_user_fits_under_a_zero_cap(
    store: TenantStore, redis: Redis, tenant_name: str
) -> None:
    """The first booking of the day makes the hash and goes to `(other)`: the hash still
    gets its expiry."""
    quota = Quota(redis, max_users_per_day=0)
    await store.create(Tenant(name=tenant_name))
    assert (await quota.reserve(tenant_name, "m", 1, 1, "j", now=NOW, user="dave")).allowed
    assert await quota.release(tenant_name, "m", "j", 1, 1, now=NOW)
    rows = names.usage_by_key(tenant_name, periods(NOW).day, "user")
    assert await redis.hgetall(rows) == {"#users": "0", "req:(other)": "1", "in:(other)": "1",
                                         "out:(other)": "1"}  # fmt: skip
    assert await redis.pexpiretime(rows) == _ms(periods(NOW).day_end + 400 * 86_400)


async def test_stale_slots_count_only_when_the_limit_is_reached(
    store: TenantStore, quota: Quota, redis: Redis, tenant_name: str
) -> None:
    """A slot whose lease ran out stays until the count reaches the limit, and then goes:
    below the limit it changes no answer, at it the stale slot is reaped and not counted."""
    await store.create(Tenant(name=tenant_name, max_concurrent=2))
    inflight = names.inflight_key(tenant_name)
    assert (await quota.reserve(tenant_name, "m", 1, 1, "crashed", now=NOW, lease=5)).allowed
    later = NOW + 6
    assert (await quota.reserve(tenant_name, "m", 1, 1, "a", now=later)).allowed
    assert await redis.zscore(inflight, "crashed") is not None  # below the limit: left
    assert (await quota.reserve(tenant_name, "m", 1, 1, "b", now=later)).allowed
    assert await redis.zscore(inflight, "crashed") is None  # at the limit: reaped
    refused = await quota.reserve(tenant_name, "m", 1, 1, "c", now=later)
    assert (refused.allowed, refused.limit) == (False, "max_concurrent")
    assert await quota.inflight(tenant_name, now=later) == 2


async def test_retried_reserve_of_a_job_whose_lease_ran_out(
    store: TenantStore, quota: Quota, tenant_name: str
) -> None:
    """A retried reserve answers the lease the job still holds, and 0 once it ran out (as
    when the stale slot was reaped before the answer), whether or not it was reaped."""
    await store.create(Tenant(name=tenant_name, max_concurrent=5))
    first = await quota.reserve(tenant_name, "m", 1, 1, "job", now=NOW, lease=5)
    assert first.reservation and first.reservation.lease_until == pytest.approx(NOW + 5)
    again = await quota.reserve(tenant_name, "m", 1, 1, "job", now=NOW + 1)
    assert again.duplicate and again.reservation
    assert again.reservation.lease_until == pytest.approx(NOW + 5)
    late = await quota.reserve(tenant_name, "m", 1, 1, "job", now=NOW + 6)
    assert late.duplicate and late.reservation and late.reservation.lease_until == 0


def test_a_key_skips_decoding_only_without_expiry_models_or_limits() -> None:
    """`quota.lua` reads a key record containing `PLAIN_KEY` as one without expiry, models
    or limits, without decoding it: any setting the script reads must break that match (a
    new limit field must be added to the script, and to this list)."""
    script = resources.files("llmq.api.tenancy").joinpath("quota.lua").read_text()
    found = re.search(r"^local PLAIN_KEY = '(.*)'$", script, re.MULTILINE)
    assert found
    plain = found.group(1)

    def record(**settings: object) -> str:
        key = ApiKey(id="key_1", tenant="t", prefix="sk-llmq-ab", sha256="0" * 64, **settings)  # type: ignore[arg-type]
        return msgspec.json.encode(key).decode()

    assert plain in record()
    assert plain in record(label='"expires_at":1.0,', owner="x", priority="high")
    # Inside a JSON string every quote is escaped: a label cannot fake the match.
    assert plain not in record(rpm=5, label=plain, owner=plain)
    unread = {"label", "owner", "priority", "cache_ttl"}  # settings the script does not read
    changed = {"expires_at": 1.0, "models": ["m"], "spend_budget_usd": 0.5}
    for field in set(KeySettings.__struct_fields__) - unread:
        value = changed.get(field, 1)
        assert plain not in record(**{field: value}), field


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
