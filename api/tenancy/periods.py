"""The time windows quotas count in: the fixed minute, the UTC day and the UTC month.

Computed in Python (the script gets the results), so tests can pass any `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    minute = int(now // 60)
    at = datetime.fromtimestamp(now, UTC)
    day_start = at.replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = day_start + timedelta(days=1)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return Periods(
        minute=minute,
        minute_end=(minute + 1) * 60.0,
        day=day_start.strftime("%Y-%m-%d"),
        day_end=next_day.timestamp(),
        month=month_start.strftime("%Y-%m"),
        month_end=next_month.timestamp(),
    )


def utc_day(now: float, days_back: int = 0) -> str:
    """The UTC day `days_back` days before the one containing `now`."""
    return (datetime.fromtimestamp(now, UTC) - timedelta(days=days_back)).strftime("%Y-%m-%d")
