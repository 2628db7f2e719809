"""The short form of the chaos suite (bench/chaos.py): one api and two echo worker processes
on the session's nats-server and Valkey, steady streamed, non-streamed and async traffic
through the official openai SDK and a batch per fault; faults: SIGSTOP of a worker (frozen,
not dead) and kill -9 of a worker mid-stream. No request may hang or come back wrong, no
batch line may be lost or doubled, and traffic must be normal again within the spell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.chaos import Deployment, run, table
from llmq.embedded import EmbeddedNats, EmbeddedRedis
from tests.spec import assert_valid
from tests.stack import unique

CLEAN_CODES = {"worker_lost", "frames_lost"}
"""What a stream cut by its worker's death or freeze ends with (502)."""
AFTER = 7.0
"""Seconds measured after each fault: more than the ack wait (4 s) and the api's silence
detection (3 pings of 1 s), so a frozen worker's jobs have gone elsewhere by then."""


@pytest.mark.timeout(120)
async def test_a_frozen_and_a_killed_worker_lose_nothing(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    dep = Deployment(
        tmp_path, apis=1, workers=2, capacity=3, echo_delay=0.03,
        nats_url=nats_server.url, redis_url=redis_server.url, model=unique("chaos"),
    )  # fmt: skip
    try:
        await dep.start()
        rows = await run(dep, ["worker-stop", "worker-kill"], calm=2.0, after=AFTER, lanes=6,
                         batch_lines=10)  # fmt: skip
    finally:
        dep.stop()
    print("\n" + table(rows))
    for row in rows:
        assert row.hung == 0 and row.wrong == 0 and row.cut == 0, table(rows)
        assert row.batch.status == "completed", table(rows)
        assert row.batch.lost == 0 and row.batch.doubled == 0, table(rows)
        assert row.batch.ok + row.batch.errors == row.batch.lines, table(rows)
        assert row.requests > 0 and row.ok > 0, table(rows)
        # Normal again within the spell: what failed or waited ended before it was over.
        assert row.normal_after < AFTER + 3, table(rows)
    # Whatever did not succeed ended with a clean OpenAI error naming what happened.
    codes = {key.split()[-1] for row in rows for key in row.notes}
    assert codes <= CLEAN_CODES, table(rows)


@pytest.mark.timeout(60)
async def test_a_job_read_while_nats_does_not_answer_is_a_clean_503(
    own_nats: EmbeddedNats, stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The chaos run's finding: while JetStream did not answer (a node lost, a leader being
    elected), `GET /v1/jobs/{id}` and `POST /v1/files` raised a bare 500. Now: a 503 in
    OpenAI's shape with Retry-After, which the SDK retries."""
    stack.nats_url = own_nats.url
    api = await stack.api()
    own_nats.kill()
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(f"{api.url}/v1/jobs/job_{'0' * 32}")
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "1"
    body = resp.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["code"] == "queue_unavailable"
    # answered by the queue errors' own handler: no traceback in the log for an election
    assert "Exception in ASGI application" not in caplog.text
