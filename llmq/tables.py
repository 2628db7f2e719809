"""Plain-text output for people: aligned tables, `field  value` cards, human times and limits.

Every listing command prints these by default and the raw JSON with `--json` (for scripts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

Column = tuple[str, int, str]
"""(header, width, align `<` or `>`); width 0 = as wide as the widest cell."""

UNLIMITED = "unlimited"


def _cell(value: object, width: int, align: str) -> str:
    text = str(value)
    if len(text) > width:
        text = text[: width - 1] + "~"
    return f"{text:{align}{width}}"


def table(columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> list[str]:
    """The header line and one line per row; a fixed-width cell too long ends in `~`."""
    widths = [
        width or max([len(header), *(len(str(row[i])) for row in rows)])
        for i, (header, width, _) in enumerate(columns)
    ]
    fitted = [(h, w, a) for (h, _, a), w in zip(columns, widths, strict=True)]
    lines = [" ".join(_cell(h, w, a) for h, w, a in fitted).rstrip()]
    for row in rows:
        lines.append(
            " ".join(_cell(v, w, a) for v, (_, w, a) in zip(row, fitted, strict=True)).rstrip()
        )
    return lines


def card(fields: Sequence[tuple[str, object]]) -> list[str]:
    """One record as `field  value` lines, the values aligned."""
    width = max((len(name) for name, _ in fields), default=0)
    return [f"{name:<{width}}  {value}".rstrip() for name, value in fields]


def ago(seconds: float) -> str:
    """A duration, rounded to its largest unit: `42s`, `5m`, `3h`, `2d`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def moment(ts: float, now: float | None = None, never: str = "-") -> str:
    """A unix time as `2026-12-07 12:50 UTC (5m ago)` or `(in 3d)`; `never` for 0."""
    if not ts:
        return never
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    delta = now - ts
    return f"{stamp} ({ago(delta)} ago)" if delta >= 0 else f"{stamp} (in {ago(-delta)})"


def since(ts: float, now: float | None = None, never: str = "never") -> str:
    """A unix time as how long ago it was (`5m ago`) or how far ahead (`in 3d`)."""
    if not ts:
        return never
    delta = (time.time() if now is None else now) - ts
    return f"{ago(delta)} ago" if delta >= 0 else f"in {ago(-delta)}"


def limit(value: float, unit: str = "") -> str:
    """A limit where 0 means none: `unlimited`, else the number (with its unit)."""
    if not value:
        return UNLIMITED
    shown = (
        f"{value:,.2f}" if isinstance(value, float) and not value.is_integer() else f"{value:,.0f}"
    )
    return f"{shown}{unit}"


def size(n: int) -> str:
    """Bytes for people: `812 B`, `4.2 MB`, `10.0 GB` (powers of 1000, as disks are sold)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"


def models(names: Sequence[str], empty: str = "all") -> str:
    return ",".join(names) if names else empty
