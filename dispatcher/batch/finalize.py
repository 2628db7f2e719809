"""The end of a batch: wind it down (cancelled or expired), build its files, write its
final status.

Wind-down stops the lines still queued or running and gives every line without a result an
`Unrun` one (first result wins). Finalizing builds the output and error files from the
stored results, one line each (deterministic ids, so writing them again replaces them),
writes the final status with one last compare-and-set, and then drops the line results
(the files hold them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.batch_input import InputGone, load_input
from llmq.dispatcher.batch.jsonl import output_line, tally
from llmq.dispatcher.batch.records import (
    FILE_ID_PREFIX,
    BatchError,
    BatchRecord,
    BatchStatus,
    Result,
    line_job_id,
    result_decoder,
    unrun,
)
from llmq.schemas import names

if TYPE_CHECKING:
    from llmq.dispatcher.batch.run import BatchRun

log = logging.getLogger(__name__)


def output_file_id(batch_hex: str) -> str:
    return f"{FILE_ID_PREFIX}{batch_hex}-output"


def error_file_id(batch_hex: str) -> str:
    return f"{FILE_ID_PREFIX}{batch_hex}-errors"


async def fail(run: BatchRun, errors: list[BatchError]) -> None:
    now = int(time.time())

    def failed(record: BatchRecord) -> BatchRecord:
        record.status, record.failed_at, record.errors = "failed", now, errors
        return record

    await run.write(failed, final=True)
    run.ctx.on_final()


async def wind_down(run: BatchRun, final: BatchStatus, code: str, message: str) -> None:
    """Cancel or expire: every line without a result gets an `Unrun` one."""
    try:
        found = await load_input(run)
    except InputGone as exc:
        await fail(run, [BatchError(code="invalid_file", message=str(exc))])
        return
    if run.following:
        await run.follow_results()
    missing = [line.number for line in found.lines if line.number not in run.done]
    # Running lines stop at once; queued ones leave the queue (those this replica queued,
    # by sequence; the others are dropped unseen by the workers that got the cancel).
    for number in missing:
        if number in found.prepared:
            with contextlib.suppress(Exception):
                await run.ctx.nc.publish(names.cancel_subject(line_job_id(run.hex, number)))
    queued = [run.seqs[n] for n in missing if n in run.seqs]
    for start in range(0, len(queued), 64):
        await asyncio.gather(
            *(_unqueue(run, seq) for seq in queued[start : start + 64]),
            return_exceptions=True,
        )
    await run.store_unrun(
        {n: unrun(code, f"line {n}: {message}", n) for n in missing}, release=True
    )
    await finalize(run, final)


async def _drop_line_results(run: BatchRun) -> None:
    """The line results of a final batch: its files hold them now. One that is not dropped
    here goes when the batch is evicted or ages out."""
    lines = names.kv_subject(names.RESULTS_BUCKET, names.line_results_key(run.hex))
    try:
        await run.ctx.js.purge_stream(f"KV_{names.RESULTS_BUCKET}", subject=lines)
    except Exception as exc:
        log.warning("batch %s: its line results stay until evicted: %s", run.key, exc)


async def _unqueue(run: BatchRun, seq: int) -> None:
    with contextlib.suppress(NotFoundError):
        await run.ctx.js.delete_msg(names.BATCH_STREAM, seq)


async def finalize(
    run: BatchRun, final: BatchStatus, errors: list[BatchError] | None = None
) -> None:
    found = await load_input(run)
    lines = found.lines
    values = await kvs.scan(run.ctx.results, f"line.{run.hex}.*")
    results: dict[int, Result] = {}
    for key, value in values.items():
        results[int(key.rsplit(".", 1)[1])] = result_decoder.decode(value)
    missing = {
        line.number: unrun("job_lost", f"line {line.number}: the request was lost", line.number)
        for line in lines
        if line.number not in results
    }
    if missing:  # cannot happen for `completed`; belt and braces for the others
        await run.store_unrun(missing, release=True)
        return  # read them back on the next step
    output: list[bytes] = []
    failed: list[bytes] = []
    for line in lines:
        data, ok = output_line(
            line_job_id(run.hex, line.number), line.custom_id, results[line.number]
        )
        (output if ok else failed).append(data)
    totals = tally(results, len(lines))
    out_id = output_file_id(run.hex) if output else None
    err_id = error_file_id(run.hex) if failed else None
    files = run.ctx.files
    if output:
        await files.put(
            run.tenant, b"".join(output), f"batch_{run.hex}_output.jsonl", "batch_output", out_id
        )
    if failed:
        await files.put(
            run.tenant, b"".join(failed), f"batch_{run.hex}_error.jsonl", "batch_output", err_id
        )
    now = int(time.time())

    def end(record: BatchRecord) -> BatchRecord:
        record.status = final
        setattr(record, f"{final}_at", now)
        record.output_file_id, record.error_file_id = out_id, err_id
        record.request_counts, record.usage = totals.counts, totals.usage
        record.dispatched = len(found.valid)
        if errors:
            record.errors = errors
        return record

    await run.write(end, final=True)
    run.ctx.on_final()
    await _drop_line_results(run)
    log.info(
        "batch %s %s: %d ok, %d failed",
        run.key,
        final,
        totals.counts.completed,
        totals.counts.failed,
    )
