"""One batch, while this replica holds its lease: the loop over its phases.

What the owner does, by status (each step is safe to repeat after a crash):

- `validating` (`validate`): read the input file, check every line, store an `Unrun` result
  for each invalid one (create-only), count the lines → `in_progress` (or `failed`);
- `in_progress` (`progress`): queue the valid lines in file order, reserving each line's
  quota first, follow their results and write progress → `finalizing`, or expired;
- `cancelling` / expired (`finalize.wind_down`): stop the lines still queued or running and
  give each line without a result an `Unrun` one;
- `finalizing` and the ends (`finalize`): write the output and error files and the final
  status with one last compare-and-set.

Every line has exactly one result (create-only keys) and the files are built from those
results, one line each, so every request appears exactly once in the output or error file.
"""

from __future__ import annotations

import asyncio
import logging

from llmq.dispatcher.batch import finalize, progress, validate
from llmq.dispatcher.batch.lease import LeaseLost
from llmq.dispatcher.batch.records import FINAL_BATCH
from llmq.dispatcher.batch.run import BatchRun
from llmq.dispatcher.tasks import run_to_end

log = logging.getLogger(__name__)


async def drive(run: BatchRun) -> None:
    """Run `run`'s phases until its batch is final or its lease is lost; a failed step is
    logged and tried again."""
    renew = asyncio.create_task(run.lease.keep(asyncio.current_task()))
    try:
        while run.record.status not in FINAL_BATCH:
            try:
                await _step(run)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.warning("batch %s: %s: %s; retrying", run.key, type(exc).__name__, exc)
                await asyncio.sleep(1.0)
    except LeaseLost:
        log.info("batch %s is no longer ours", run.key)
    finally:
        await run_to_end(run.close(renew))


async def _step(run: BatchRun) -> None:
    status = run.record.status
    if status == "validating":
        await validate.validate(run)
    elif status == "in_progress":
        await progress.progress(run)
    elif status == "cancelling":
        await finalize.wind_down(run, "cancelled", "batch_cancelled", "the batch was cancelled")
    elif status == "finalizing":
        await finalize.finalize(run, "completed")
