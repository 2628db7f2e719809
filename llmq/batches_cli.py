"""`llmq batches [list | show ID | watch ID]`: the Batch API's batches, read from NATS.

Like `llmq status`, it needs no api: the records are in the LLMQ_BATCHES bucket, which the
batch runner updates about twice a second. `watch` redraws a progress bar (lines done and
failed of the total, the rate, the time left) until the batch ends, then prints its output
and error file ids; it exits 0 when the batch completed, 1 when it failed, expired or was
cancelled. Not on a terminal it prints one line per look instead (logs, CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import time
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmq.batch_progress import Rate, listing, log_line, public_id, screen, tenant
from llmq.dispatcher.batch.records import (
    BATCH_ID_PREFIX,
    FINAL_BATCH,
    BatchRecord,
    batch_decoder,
    batch_view,
    is_hex_id,
    strip_prefix,
)
from llmq.dispatcher.probes import bucket_values
from llmq.ops_cli import CLEAR, dump, nats_command, print_lines, run_with_nats
from llmq.schemas import names

STREAM = f"KV_{names.BATCHES_BUCKET}"


def as_json(record: BatchRecord) -> dict[str, Any]:
    """The OpenAI batch object, with the tenant it belongs to."""
    return {**batch_view(record), "tenant": tenant(record)}


async def read_batches(js: JetStreamContext, timeout: float) -> list[BatchRecord]:
    """Every batch, newest first (ids are time-ordered); none when the bucket is missing."""
    try:
        raw = await bucket_values(js, names.BATCHES_BUCKET, max(timeout, 2.0))
    except NotFoundError:
        return []
    records = []
    for value in raw:
        with contextlib.suppress(Exception):
            records.append(batch_decoder.decode(value))
    return sorted(records, key=lambda r: r.id, reverse=True)


async def batch_subject(js: JetStreamContext, batch_hex: str) -> str | None:
    """The KV subject holding the batch (its key starts with the owner's tenant token)."""
    pattern = f"$KV.{names.BATCHES_BUCKET}.*.{batch_hex}"
    try:
        info = await js.stream_info(STREAM, subjects_filter=pattern)
    except NotFoundError:
        return None
    subjects = (info.state.subjects or {}) if info.state else {}
    return next(iter(subjects), None)


async def read_batch(js: JetStreamContext, subject: str) -> BatchRecord | None:
    try:
        msg = await js.get_last_msg(STREAM, subject)
    except NotFoundError:
        return None
    if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
        return None
    return batch_decoder.decode(msg.data)


def _hex(batch_id: str | None) -> str | None:
    """The hex of `batch_<hex>` (or of the bare hex); None for anything else."""
    given = batch_id or ""
    return strip_prefix(given, BATCH_ID_PREFIX) or (given if is_hex_id(given) else None)


def _no_batch(batch_id: str) -> int:
    print(f"llmq: no batch {batch_id} (see `llmq batches list`)", file=sys.stderr)
    return 1


async def _list(nc: Client, args: argparse.Namespace) -> int:
    records = await read_batches(nc.jetstream(), args.timeout)
    if args.tenant:
        records = [r for r in records if tenant(r) == args.tenant]
    records = records[: args.limit]
    print_lines([dump([as_json(r) for r in records])] if args.json else listing(records))
    return 0


async def _show(nc: Client, args: argparse.Namespace, batch_hex: str) -> int:
    js = nc.jetstream()
    subject = await batch_subject(js, batch_hex)
    record = await read_batch(js, subject) if subject else None
    if record is None:
        return _no_batch(args.batch_id)
    print_lines([dump(as_json(record))] if args.json else screen(record, Rate()))
    return 0


async def _watch(nc: Client, args: argparse.Namespace, batch_hex: str) -> int:
    js = nc.jetstream()
    subject = await batch_subject(js, batch_hex)
    if subject is None:
        return _no_batch(args.batch_id)
    tty = sys.stdout.isatty() and not args.json
    rate = Rate()
    while True:
        started = time.monotonic()
        record = await read_batch(js, subject)
        if record is None:
            return _no_batch(args.batch_id)
        rate.add(record)
        if args.json:
            print_lines([dump(as_json(record))])
        elif tty:
            width = shutil.get_terminal_size((80, 24)).columns
            head = f"llmq batches watch  every {args.interval:g}s  Ctrl-C quits"
            lines = [head, "", *screen(record, rate)]
            sys.stdout.write(CLEAR)
            print_lines([line[:width] for line in lines])
        else:
            print_lines([log_line(record, rate)])
        if record.status in FINAL_BATCH:
            if not tty and not args.json:
                out, err = record.output_file_id or "-", record.error_file_id or "-"
                print_lines(
                    [f"{public_id(record)} {record.status}: output file {out}, error file {err}"]
                )
            return 0 if record.status == "completed" else 1
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))


def cmd_batches(args: argparse.Namespace) -> int:
    if args.action == "list":
        return run_with_nats(args, lambda nc, _url: _list(nc, args))
    batch_hex = _hex(args.batch_id)
    if batch_hex is None:
        print(
            f"llmq: `llmq batches {args.action}` needs a batch id (batch_ and 32 hex digits; "
            "see `llmq batches list`)",
            file=sys.stderr,
        )
        return 2
    if args.action == "show":
        return run_with_nats(args, lambda nc, _url: _show(nc, args, batch_hex))
    return run_with_nats(args, lambda nc, _url: _watch(nc, args, batch_hex))


def register(sub: Any) -> None:
    batches = nats_command(
        sub, "batches", "batches of the Batch API: list, show ID, or watch ID's progress"
    )
    batches.add_argument("action", nargs="?", default="list", choices=["list", "show", "watch"])
    batches.add_argument("batch_id", nargs="?", help="batch_... (from `llmq batches list`)")
    batches.add_argument("--tenant", default=None, help="list: only this tenant's batches")
    batches.add_argument("--limit", type=int, default=20, help="list: most batches shown")
    batches.add_argument("--interval", type=float, default=1.0, help="watch: seconds per look")
    batches.set_defaults(handler=cmd_batches)
