"""A batch's input file, read and checked once per run: every line parsed, every valid line
prepared as a job (the validating, in-progress and wind-down phases all read it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines, parse_input
from llmq.dispatcher.batch.records import BATCH_ENDPOINTS, Unrun
from llmq.dispatcher.batch.run import BatchInput
from llmq.schemas.admission import Refusal
from llmq.schemas.endpoints import EndpointCall, pack

if TYPE_CHECKING:
    from llmq.dispatcher.batch.run import BatchRun


class InputGone(Exception):
    """The batch's input file cannot be read any more."""


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
    kind = BATCH_ENDPOINTS[record.endpoint]
    max_body = int(ctx.nc.max_payload) - 1024
    found = BatchInput(lines)
    for line in lines:
        if line.error is not None or line.body is None:
            continue
        body = line.body
        if kind == "endpoint":  # its path travels with the body (schemas/endpoints)
            body = pack(EndpointCall(record.endpoint, "application/json"), body)
        try:
            prepared = await ctx.preparer.prepare_durable(kind, body)
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
