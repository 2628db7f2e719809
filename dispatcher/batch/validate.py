"""The validating phase: read the batch's input file and check every line.

Each line is prepared the way an interactive request is (the api's `Preparer`); a line
that cannot run gets an `Unrun` result of its own (create-only), and the batch moves on to
`in_progress` with the valid ones — or fails when none is valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmq.dispatcher.batch import finalize
from llmq.dispatcher.batch.jsonl import InputLine, NotJsonl, TooManyLines, parse_input
from llmq.dispatcher.batch.records import (
    KIND_OF_ENDPOINT,
    BatchError,
    BatchRecord,
    Unrun,
    encoder,
)
from llmq.schemas.admission import PreparedRequest, Refusal

if TYPE_CHECKING:
    from llmq.dispatcher.batch.run import BatchRun


class InputGone(Exception):
    """The batch's input file cannot be read any more."""


@dataclass(slots=True)
class BatchInput:
    """The input file, line by line, with every valid line prepared."""

    lines: list[InputLine]
    prepared: dict[int, PreparedRequest] = field(default_factory=dict)
    valid: list[int] = field(default_factory=list)
    """Numbers of the lines that can run, in file order."""


async def load_input(run: BatchRun) -> BatchInput:
    """The input, read and checked once per run (the model catalog may have changed since
    the last run, so a resumed batch checks again)."""
    if run.input is not None:
        return run.input
    record, ctx = run.record, run.ctx
    data = await ctx.files.content(run.tenant, record.input_file_id)
    if data is None:
        raise InputGone(f"the input file {record.input_file_id} was deleted")
    try:
        lines = parse_input(data, record.endpoint, ctx.max_lines)
    except (NotJsonl, TooManyLines) as exc:
        raise InputGone(str(exc)) from None
    kind = KIND_OF_ENDPOINT[record.endpoint]
    max_body = int(ctx.nc.max_payload) - 1024
    found = BatchInput(lines)
    for line in lines:
        if line.error is not None or line.body is None:
            continue
        try:
            prepared = ctx.preparer.prepare_durable(kind, line.body)
        except Refusal as exc:
            line.error = Unrun(
                code=exc.code,
                message=f"line {line.number}: {exc.message}",
                line=line.number,
                param=exc.param,
            )
            continue
        if len(prepared.body) > max_body:
            line.error = Unrun(
                code="request_too_large",
                message=f"line {line.number}: the request is larger than {max_body} bytes",
                line=line.number,
            )
            continue
        found.prepared[line.number] = prepared
        found.valid.append(line.number)
    run.input = found
    return found


async def validate(run: BatchRun) -> None:
    if time.time() >= run.record.expires_at:
        await finalize.wind_down(
            run, "expired", "batch_expired", "the batch's completion window ended"
        )
        return
    try:
        found = await load_input(run)
    except InputGone as exc:
        await finalize.fail(run, [BatchError(code="invalid_file", message=str(exc))])
        return
    lines = found.lines
    invalid = {line.number: encoder.encode(line.error) for line in lines if line.error}
    await run.store_unrun(invalid)
    if not found.valid:
        errors = [
            BatchError(code=e.code, message=e.message, line=e.line, param=e.param)
            for line in lines[:100]
            if (e := line.error) is not None
        ]
        await finalize.finalize(run, "failed", errors)
        return
    model = found.prepared[found.valid[0]].model
    now = int(time.time())

    def start(record: BatchRecord) -> BatchRecord:
        if record.status == "validating":
            record.status, record.in_progress_at = "in_progress", now
            record.request_counts.total = len(lines)
            record.model = model
        return record

    await run.write(start)
