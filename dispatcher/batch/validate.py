"""The validating phase: read the batch's input file and check every line.

Each line is prepared the way an interactive request is (the api's `Preparer`); a line
that cannot run gets an `Unrun` result of its own (create-only), and the batch moves on to
`in_progress` with the valid ones — or fails when none is valid.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmq.dispatcher.batch import finalize
from llmq.dispatcher.batch.batch_input import InputGone, load_input
from llmq.dispatcher.batch.records import (
    BatchError,
    BatchRecord,
    encoder,
)

if TYPE_CHECKING:
    from llmq.dispatcher.batch.run import BatchRun


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
