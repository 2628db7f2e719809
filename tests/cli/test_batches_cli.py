"""`llmq batches list|show|watch` follow a real batch (created with the `openai` SDK) from
NATS alone, and `llmq jobs` tells its lines apart — real nats-server, Valkey, api, worker."""

from __future__ import annotations

import asyncio
import io
import json
import re

import openai
import pytest

from llmq.cli import main
from llmq.ops_cli import short_job_id
from tests.e2e.test_batches import batch_file, jsonl, request_line
from tests.stack import unique, wait_for


async def llmq(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (its own event loop) while the stack runs in this one."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_batch_lines_short_id_keeps_its_line_number() -> None:
    batch_hex = "01a2b3c4d5e6" + "f" * 10 + "0123456789"
    assert short_job_id(f"{batch_hex}-7", 12) == "ffffffffff-7"
    assert short_job_id(f"{batch_hex}-12345", 12) == "ffffff-12345"
    assert short_job_id("0123456789abcdef0123456789abcdef", 12) == "0123456789ab"


async def test_batches_and_their_lines_from_the_cli(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    model = unique("cli-batch")
    api = await stack.api()
    worker = await stack.worker(model=[model], capacity=1, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    data, _ = batch_file(model, 12, words=3)  # 12 lines of ~0.3 s each, one at a time
    bad = request_line("req-bad", unique("nobody-serves-this"), "x")
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused")
    upload = await sdk.files.create(
        file=("in.jsonl", io.BytesIO(data + jsonl([bad])), "application/jsonl"), purpose="batch"
    )
    batch = await sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    url = ["--nats-url", stack.nats_url]
    await wait_for(lambda: worker.scheduler.in_flight == 1, timeout=30)

    # llmq jobs: the running and queued lines of the batch, each with an id of its own
    code, out, err = await llmq(capsys, "jobs", "--model", model, *url)
    assert code == 0, err
    ids = [line.split()[0] for line in out.splitlines()[1:]]
    assert len(ids) >= 2 and len(set(ids)) == len(ids), out
    hex_part = batch.id.removeprefix("batch_")
    for shown in ids:  # the random part of the batch id (after its 12 time digits), the line
        head, _, number = shown.rpartition("-")
        assert hex_part[12:].startswith(head) and len(head) >= 6 and number.isdigit(), ids
    code, out, _ = await llmq(capsys, "jobs", "--model", model, "--wide", *url)
    assert f"{hex_part}-1 " in out or f"{hex_part}-2 " in out, out

    # list and show while it runs
    code, out, _ = await llmq(capsys, "batches", "list", *url)
    assert out.splitlines()[0].split()[:3] == ["BATCH", "TENANT", "STATUS"]
    (row,) = [line for line in out.splitlines() if line.startswith(batch.id)]
    assert row.split()[2] in ("validating", "in_progress") and row.split()[5] == "13"
    code, out, _ = await llmq(capsys, "batches", "list", "--json", *url)
    (listed,) = [b for b in json.loads(out) if b["id"] == batch.id]
    assert listed["object"] == "batch" and listed["request_counts"]["total"] in (0, 13)
    code, out, _ = await llmq(capsys, "batches", "show", batch.id, *url)
    assert code == 0 and out.startswith(f"{batch.id}  ")
    assert re.search(r"\[[#x-]{40}\] +\d+%", out) and "output file  -" in out

    # watch, as in a log (not a terminal): a line per look until it ends, then the files
    code, out, err = await llmq(capsys, "batches", "watch", batch.id, "--interval", "0.3", *url)
    assert code == 0, err
    looks = out.splitlines()
    done = [int(m.group(1)) for m in map(re.compile(r" (\d+)/13 lines done").search, looks) if m]
    assert len(done) >= 3 and done == sorted(done) and done[0] < 13 and done[-1] == 13, out
    assert any(re.search(r"rate \d+\.\d/s   ETA \d+[smh]", line) for line in looks), out
    final = await sdk.batches.retrieve(batch.id)
    assert final.status == "completed" and final.request_counts.failed == 1  # type: ignore[union-attr]
    assert looks[-1] == (
        f"{batch.id} completed: output file {final.output_file_id}, "
        f"error file {final.error_file_id}"
    )
    code, out, _ = await llmq(capsys, "batches", "show", batch.id, *url)
    assert f"output file  {final.output_file_id}" in out
    assert f"error file   {final.error_file_id}" in out
    assert "13/13 lines done: 12 ok, 1 failed" in out and "took " in out
    await sdk.close()


async def test_batches_mistakes(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    url = ["--nats-url", stack.nats_url]
    code, _, err = await llmq(capsys, "batches", "show", "nonsense", *url)
    assert code == 2 and "needs a batch id (batch_ and 32 hex digits" in err
    missing = "batch_" + "0" * 32
    code, _, err = await llmq(capsys, "batches", "watch", missing, *url)
    assert code == 1 and err == f"llmq: no batch {missing} (see `llmq batches list`)\n"


def test_the_bar_never_hides_a_failure() -> None:
    from llmq.batch_progress import bar
    from llmq.dispatcher.batch.records import BatchRecord, RequestCounts

    def record(completed: int, failed: int, total: int = 600) -> BatchRecord:
        counts = RequestCounts(total=total, completed=completed, failed=failed)
        return BatchRecord(id="0" * 32, tenant="t", endpoint="/v1/chat/completions",
                           input_file_id="f", completion_window="24h", created_at=0,
                           expires_at=1, request_counts=counts)  # fmt: skip

    assert bar(record(593, 7), 40) == "[" + "#" * 39 + "x] 100%"
    assert bar(record(300, 0), 40) == "[" + "#" * 20 + "-" * 20 + "]  50%"
    assert bar(record(0, 0, total=0), 10) == "[----------]    -"
