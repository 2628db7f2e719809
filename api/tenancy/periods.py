"""The time windows quotas count in: the fixed minute, the UTC day and the UTC month.

Computed in Python (the script gets the results), so tests can pass any `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

from msgspec import Struct


class Periods(Struct, frozen=True):
    minute: int
    """Unix seconds // 60."""
    minute_end: float
    day: str
    """UTC, YYYY-MM-DD."""
    day_end: float
    month: str
    """UTC, YYYY-MM."""
    month_end: float


def periods(now: float) -> Periods:
    """The periods `now` falls in; the same object for every call in one minute."""
    return _of_minute(int(now // 60))


@lru_cache(maxsize=16)
def _of_minute(minute: int) -> Periods:
    """Pure in the minute (a day is 1,440 of them), so cached: the request path asks once
    per request, and a tenant's calls of one minute share the answer."""
    day, day_end, month, month_end = _calendar(minute // 1440)
    return Periods(
        minute=minute,
        minute_end=(minute + 1) * 60.0,
        day=day,
        day_end=day_end,
        month=month,
        month_end=month_end,
    )


@lru_cache(maxsize=64)
def _calendar(day_number: int) -> tuple[str, float, str, float]:
    """Day and month names and ends of one UTC day (days since the epoch): pure, so cached,
    which keeps datetime arithmetic off the per-request path."""
    day_start = datetime.fromtimestamp(day_number * 86_400, UTC)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return (
        day_start.strftime("%Y-%m-%d"),
        (day_start + timedelta(days=1)).timestamp(),
        month_start.strftime("%Y-%m"),
        next_month.timestamp(),
    )


def utc_day(now: float, days_back: int = 0) -> str:
    """The UTC day `days_back` days before the one containing `now`."""
    return (datetime.fromtimestamp(now, UTC) - timedelta(days=days_back)).strftime("%Y-%m-%d")
