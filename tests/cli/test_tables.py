"""The plain-text helpers every listing prints with: tables (fixed or fitted columns), cards,
human times, limits and sizes."""

from __future__ import annotations

from llmq.tables import ago, card, limit, moment, since, size, table

NOW = 1_796_650_000.0  # 2026-12-07 13:26:40 UTC


def test_fitted_and_fixed_columns() -> None:
    lines = table([("NAME", 0, "<"), ("N", 0, ">"), ("CUT", 4, "<")],
                  [["a-long-name", 7, "abcdefgh"], ["b", 1234, "ab"]])  # fmt: skip
    assert lines == [
        "NAME           N CUT",
        "a-long-name    7 abc~",
        "b           1234 ab",
    ]


def test_card_aligns_the_values() -> None:
    assert card([("rpm", "600"), ("max concurrent", "unlimited")]) == [
        "rpm             600",
        "max concurrent  unlimited",
    ]


def test_times_for_people() -> None:
    assert [ago(s) for s in (0, 59, 60, 3599, 3600, 86400 * 3)] == [
        "0s",
        "59s",
        "1m",
        "60m",
        "1h",
        "3d",
    ]
    assert moment(NOW - 300, NOW) == "2026-12-07 13:21 UTC (5m ago)"
    assert moment(NOW + 86400 * 30, NOW) == "2027-01-06 13:26 UTC (in 30d)"
    assert moment(0, NOW) == "-" and since(0, NOW) == "never"
    assert since(NOW - 90, NOW) == "2m ago" and since(NOW + 7200, NOW) == "in 2h"


def test_limits_and_sizes() -> None:
    assert [limit(0), limit(600), limit(200_000), limit(0.0), limit(2.5, " USD")] == [
        "unlimited", "600", "200,000", "unlimited", "2.50 USD",
    ]  # fmt: skip
    assert [size(812), size(4_200_000), size(10_000_000_000), size(3 * 10**12)] == [
        "812 B", "4.2 MB", "10.0 GB", "3.0 TB",
    ]  # fmt: skip
