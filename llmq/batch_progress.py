"""How a batch looks to a person: its progress bar (lines done, failed, total), the rate and
the time left measured between looks, its files. Pure functions of the stored record, so
`llmq batches list|show|watch` and their tests share them."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmq.dispatcher.batch.records import BATCH_ID_PREFIX, FINAL_BATCH, BatchRecord
from llmq.schemas import names
from llmq.tables import Column, ago, card, moment, since, table

BAR_WIDTH = 40
LIST_COLUMNS: list[Column] = [
    ("BATCH", 0, "<"),
    ("TENANT", 0, "<"),
    ("STATUS", 0, "<"),
    ("DONE", 0, ">"),
    ("FAILED", 0, ">"),
    ("TOTAL", 0, ">"),
    ("MODEL", 0, "<"),
    ("CREATED", 0, ">"),
]


def public_id(record: BatchRecord) -> str:
    return BATCH_ID_PREFIX + record.id


def tenant(record: BatchRecord) -> str:
    return names.tenant_of_scope(record.tenant) or "(anonymous)"


def finished(record: BatchRecord) -> int:
    counts = record.request_counts
    return counts.completed + counts.failed


def bar(record: BatchRecord, width: int = BAR_WIDTH) -> str:
    """`[#####xx------]  52%`: `#` lines that succeeded, `x` lines that failed, `-` the rest."""
    counts = record.request_counts
    total = counts.total
    if not total:
        return f"[{'-' * width}]    -"
    bad = max(1, round(width * counts.failed / total)) if counts.failed else 0
    ok = min(width - bad, round(width * counts.completed / total))  # a failure never hides
    pct = 100 * finished(record) // total
    return f"[{'#' * ok}{'x' * bad}{'-' * (width - ok - bad)}] {pct:3d}%"


@dataclass
class Rate:
    """Lines finished per second over the last `window` seconds of looks; before two looks,
    the average since the batch started running."""

    window: float = 15.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, record: BatchRecord, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.samples.append((now, finished(record)))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def per_second(self, record: BatchRecord, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        if len(self.samples) >= 2:
            (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
            if t1 > t0 and n1 > n0:
                return (n1 - n0) / (t1 - t0)
        started = record.in_progress_at
        if started and now > started and finished(record):
            return finished(record) / (now - started)
        return None


def rate_and_eta(record: BatchRecord, rate: Rate, now: float | None = None) -> str:
    if record.status in FINAL_BATCH:
        end = _ended_at(record)
        took = end - (record.in_progress_at or record.created_at) if end else 0
        return f"took {ago(took)}" if end else ""
    per_second = rate.per_second(record, now)
    if per_second is None:
        return "rate -   ETA -"
    left = max(0, record.request_counts.total - finished(record))
    return f"rate {per_second:.1f}/s   ETA {ago(left / per_second) if left else '0s'}"


def _ended_at(record: BatchRecord) -> int | None:
    return record.completed_at or record.failed_at or record.expired_at or record.cancelled_at


def counts_line(record: BatchRecord) -> str:
    counts = record.request_counts
    return (
        f"{finished(record)}/{counts.total} lines done: {counts.completed} ok, "
        f"{counts.failed} failed"
    )


def screen(record: BatchRecord, rate: Rate, now: float | None = None) -> list[str]:
    """The whole `llmq batches show|watch` picture of one batch."""
    return [
        f"{public_id(record)}  {record.status}",
        "",
        f"  {bar(record)}",
        f"  {counts_line(record)}   {rate_and_eta(record, rate, now)}".rstrip(),
        "",
        *card(
            [
                ("tenant", tenant(record)),
                ("model", record.model or "-"),
                ("endpoint", record.endpoint),
                ("input file", record.input_file_id),
                ("output file", record.output_file_id or "-"),
                ("error file", record.error_file_id or "-"),
                ("created", moment(record.created_at, now)),
                ("expires", "-" if record.status in FINAL_BATCH else since(record.expires_at, now)),
            ]
        ),
        *(
            f"  ! line {e.line}: {e.code}: {e.message}" if e.line else f"  ! {e.code}: {e.message}"
            for e in (record.errors or [])[:5]
        ),
    ]


def log_line(record: BatchRecord, rate: Rate, now: float | None = None) -> str:
    """One line per look when the output is not a terminal (a log, a pipe, CI)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp} {record.status} {bar(record, 20)} {counts_line(record)}   " + rate_and_eta(
        record, rate, now
    )


def listing(records: Sequence[BatchRecord], now: float | None = None) -> list[str]:
    if not records:
        return ["no batches"]
    now = time.time() if now is None else now
    rows = [
        [
            public_id(r),
            tenant(r),
            r.status,
            r.request_counts.completed,
            r.request_counts.failed,
            r.request_counts.total,
            r.model or "-",
            f"{ago(now - r.created_at)} ago",
        ]
        for r in records
    ]
    return table(LIST_COLUMNS, rows)
