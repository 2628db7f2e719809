"""`llmq status | top | workers | jobs` read NATS directly (no api needed), take --nats-url
and --json, and fit an 80-column terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import nats
import nats.aio.client
import pytest
from nats.aio.msg import Msg
from nats.micro.service import ServiceVerb, control_subject

from llmq import snapshot
from llmq.cli import main
from llmq.dispatcher.probes import queue_states
from llmq.schemas import names
from llmq.schemas.registry import WorkerInfo, registry_encoder
from tests.stack import refused_port, unique, wait_for


async def llmq(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI in a thread (its own event loop) while the stack runs in this one."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


def _by(items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    (found,) = [item for item in items if item[key] == value]
    return found


async def test_status_workers_and_jobs_while_jobs_queue(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    busy, spare = unique("cli-busy"), unique("cli-spare")
    api = await stack.api()
    w1 = await stack.worker(model=[busy], capacity=1, echo_delay=0.25, worker_id=unique("w1"))
    w2 = await stack.worker(model=[spare], capacity=3, worker_id=unique("w2"))
    await wait_for(lambda: api.runtime.registry.workers_for(busy))
    await wait_for(lambda: api.runtime.registry.workers_for(spare))
    nats_url = stack.nats_url
    # The running job lasts ~6 s (24 words, 0.25 s each): the CLI calls below must all see
    # it running and the other two queued, even on a loaded machine.
    long = {"model": busy, "messages": [{"role": "user", "content": " ".join(["w"] * 24)}]}
    short = {"model": busy, "messages": [{"role": "user", "content": "a"}]}

    async def two_queued() -> bool:
        states = await queue_states(api.runtime.nc.jetstream())
        return any(q.model == busy and q.pending == 2 for q in states)

    async with httpx.AsyncClient(timeout=60) as client:
        url = f"{api.url}/v1/chat/completions"
        tasks = [asyncio.create_task(client.post(url, json=long))]
        await wait_for(lambda: w1.scheduler.in_flight == 1, timeout=30)
        tasks += [asyncio.create_task(client.post(url, json=short)) for _ in range(2)]
        await wait_for(two_queued, timeout=30)  # published and waiting in LLMQ_JOBS

        code, out = await llmq(capsys, "status", "--nats-url", nats_url, "--json")
        assert code == 0
        status = json.loads(out)
        assert status["nats_url"] == nats_url
        model = _by(status["models"], "name", busy)
        assert (model["workers"], model["capacity"], model["in_flight"]) == (1, 1, 1)
        assert model["queued"] == 2
        assert _by(status["models"], "name", spare)["capacity"] == 3
        worker = _by(status["workers"], "id", w1.id)
        assert worker["in_flight"] == 1 and worker["capacity"] == 1
        assert worker["backend"] == "echo" and worker["state"] == "ready"
        assert worker["in_flight_by_model"] == {busy: 1}
        assert _by(status["workers"], "id", w2.id)["models"] == [spare]
        assert _by(status["apis"], "instance", api.settings.api.instance_id)["accepting"] is True

        code, out = await llmq(capsys, "status", "--nats-url", nats_url)
        assert code == 0
        lines = out.splitlines()
        assert all(len(line) <= 80 for line in lines), [ln for ln in lines if len(ln) > 80]
        assert lines[0].startswith(f"llmq at {nats_url}")
        (row,) = [ln for ln in lines if ln.startswith(busy)]
        # unacked 1: a non-streaming job is acked when it ends
        assert row.split() == [busy, "1", "1", "1", "2", "1", "0", "?"]  # WAIT: no rate yet
        assert any(ln.startswith("WORKER") for ln in lines)
        assert any(ln.startswith("API") for ln in lines)

        code, out = await llmq(capsys, "jobs", "--nats-url", nats_url, "--json", "--model", busy)
        jobs = json.loads(out)
        assert [j["state"] for j in jobs] == ["running", "queued", "queued"]
        assert jobs[0]["worker"] == w1.id and all(j["model"] == busy for j in jobs)
        assert all(len(j["job_id"]) == 32 for j in jobs)
        assert jobs[1]["deadline_in"] > 0
        code, out = await llmq(capsys, "jobs", "--nats-url", nats_url, "--model", busy)
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["JOB", "MODEL", "STATE"]
        assert len(lines) == 4 and all(len(line) <= 80 for line in lines)
        assert jobs[0]["job_id"][:11] in lines[1] and w1.id[:11] in lines[1]

        results = await asyncio.gather(*tasks)
    ids = {r.headers["x-request-id"] for r in results}
    assert {j["job_id"] for j in jobs} == ids  # the X-Request-ID of each request

    workers: list[dict[str, Any]] = []

    async def with_stats() -> bool:
        """`jobs`/`errors` come from each worker's micro STATS reply, gathered for 0.5 s; a
        loaded machine can miss it (`null`), so ask until it came."""
        _code, out = await llmq(capsys, "workers", "--nats-url", nats_url, "--json")
        workers[:] = json.loads(out)
        return _by(workers, "id", w1.id)["jobs"] is not None

    await wait_for(with_stats)
    assert _by(workers, "id", w1.id)["jobs"] == 3
    assert _by(workers, "id", w1.id)["errors"] == 0
    lines: list[str] = []

    async def table_with_stats() -> bool:
        """The table's JOBS/ERRS come from the same STATS replies: `-` when missed."""
        _code, out = await llmq(capsys, "workers", "--nats-url", nats_url)
        lines[:] = out.splitlines()
        return any(ln.startswith(w1.id) and ln.split()[5] != "-" for ln in lines)

    await wait_for(table_with_stats)
    assert lines[0].split() == [
        "WORKER",
        "BACKEND",
        "MODELS",
        "SLOTS",
        "STATE",
        "JOBS",
        "ERRS",
        "SEEN",
    ]
    (row,) = [ln for ln in lines if ln.startswith(w1.id)]
    assert row.split()[3:7] == ["0/1", "ready", "3", "0"]


async def test_top_refreshes_within_80_columns(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    model = unique("cli-top")
    await stack.worker(model=[model], worker_id=unique("a-very-long-worker-name-indeed"))
    code, out = await llmq(
        capsys, "top", "--nats-url", stack.nats_url, "--interval", "0.1", "--iterations", "2"
    )
    assert code == 0
    frames = out.split("llmq top")
    assert len(frames) == 3  # "" + two frames
    assert all(len(line) <= 80 for line in out.splitlines())
    assert model in frames[2]
    code, out = await llmq(
        capsys,
        "top",
        "--nats-url",
        stack.nats_url,
        "--json",
        "--interval",
        "0",
        "--iterations",
        "2",
    )
    assert [json.loads(line)["nats_url"] for line in out.splitlines()] == [stack.nats_url] * 2


async def test_unreachable_nats_is_a_clear_error(capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"nats://127.0.0.1:{refused_port()}"
    # tried for 1 s (`--wait`, 10 s by default) before it gives up
    code = await asyncio.to_thread(main, ["status", "--nats-url", url, "--wait", "1"])
    assert code == 1
    assert f"cannot reach NATS at {url}" in capsys.readouterr().err


async def test_status_as_a_process_reads_the_environment(stack) -> None:  # type: ignore[no-untyped-def]
    model, gone = unique("cli-proc"), unique("cli-gone")
    await stack.worker(model=[model])
    left = await stack.worker(model=[gone])
    await left.close()  # deletes its registry entry: not listed
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llmq.cli", "workers", "--json"],
        env={"LLMQ_NATS_URL": stack.nats_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    workers = json.loads(proc.stdout)
    assert any(w["models"] == [model] for w in workers), (proc.stdout, proc.stderr)
    assert not any(w["models"] == [gone] for w in workers)


class LateWorker:
    """A worker as NATS sees it: an entry in the registry (LLMQ_WORKERS) and an `llmq-worker`
    micro service instance that answers STATS `delay` seconds late, as a loaded worker does
    (`None`: it never answers)."""

    def __init__(self, nc: nats.aio.client.Client, delay: float | None) -> None:
        self.nc, self.delay = nc, delay
        self.id = unique("late")
        self.model = unique("late-m")
        self.beating: asyncio.Task[None] | None = None

    async def start(self) -> LateWorker:
        kv = await self.nc.jetstream().key_value(names.WORKERS_BUCKET)

        async def put() -> None:
            info = WorkerInfo(self.id, "echo", [self.model], 2, heartbeat_at=time.time())
            await kv.put(self.id, registry_encoder.encode(info))

        async def beat() -> None:  # within the bucket's TTL, as a worker's heartbeat
            while True:
                await asyncio.sleep(0.2)
                await put()

        await put()
        self.beating = asyncio.create_task(beat())
        if self.delay is not None:
            subject = control_subject(ServiceVerb.STATS, name=names.MICRO_SERVICE)
            await self.nc.subscribe(subject, cb=self._stats)
        return self

    async def _stats(self, msg: Msg) -> None:
        await asyncio.sleep(self.delay or 0)
        reply = {
            "type": "io.nats.micro.v1.stats_response",
            "name": names.MICRO_SERVICE,
            "id": self.id,
            "version": "0.0.0",
            "metadata": {"worker_id": self.id, "backend": "echo", "capacity": "2"},
            "endpoints": [{"name": "jobs", "num_requests": 7, "num_errors": 1}],
        }
        await msg.respond(json.dumps(reply).encode())

    async def leave(self) -> None:
        if self.beating is not None:
            self.beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.beating
        kv = await self.nc.jetstream().key_value(names.WORKERS_BUCKET)
        await kv.delete(self.id)


async def test_a_slow_worker_is_waited_for_and_a_silent_one_named(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    """A loaded worker answering STATS after the others still shows with its counts; one
    that never answers is named, and the command ends by its `--timeout`."""
    await stack.worker(model=[unique("cli-fast")])  # answers at once
    nc = await nats.connect(stack.nats_url)
    late, silent = LateWorker(nc, 0.8), LateWorker(nc, None)
    try:
        await late.start()
        await silent.start()
        begun = time.monotonic()
        code, out = await llmq(capsys, "workers", "--nats-url", stack.nats_url, "--json",
                               "--timeout", "4")  # fmt: skip
        took = time.monotonic() - begun
        assert code == 0
        workers = json.loads(out)
        assert _by(workers, "id", late.id)["jobs"] == 7
        assert _by(workers, "id", late.id)["answered"] is True
        assert _by(workers, "id", silent.id)["answered"] is False
        assert 0.8 <= took < 30
        code, out = await llmq(capsys, "workers", "--nats-url", stack.nats_url, "--timeout", "2")
        (note,) = [line for line in out.splitlines() if line.startswith("!")]
        assert note == f"! no reply within 2s from 1 worker(s): {silent.id}"
        (row,) = [line for line in out.splitlines() if line.startswith(late.id)]
        assert row.split()[5:7] == ["7", "1"]
        code, out = await llmq(capsys, "status", "--nats-url", stack.nats_url, "--json",
                               "--timeout", "2")  # fmt: skip
        assert json.loads(out)["unanswered"] == [silent.id]
    finally:
        await late.leave()
        await silent.leave()
        await nc.close()


async def test_status_waits_for_an_api_replica_that_answers_late(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    """No registry names the api replicas: `llmq status` collects their PING replies until
    its `--timeout`, so a loaded replica (here a real api process, stopped for a second)
    that answers after the other is in the table, not left out."""
    prompt = await stack.api()
    loaded = await stack.api_process()

    async def both_answer() -> bool:
        _, out = await llmq(capsys, "status", "--nats-url", stack.nats_url, "--json")
        return len(json.loads(out)["apis"]) == 2

    await wait_for(both_answer, timeout=30)
    os.kill(loaded.proc.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        status = asyncio.create_task(
            llmq(capsys, "status", "--nats-url", stack.nats_url, "--json", "--timeout", "4")
        )
        await asyncio.sleep(1.0)
    finally:
        os.kill(loaded.proc.pid, signal.SIGCONT)
    code, out = await status
    took = time.monotonic() - began
    apis = json.loads(out)["apis"]
    assert code == 0 and len(apis) == 2, apis
    assert prompt.settings.api.instance_id in [api["instance"] for api in apis]
    assert 1.0 <= took < 30

    # `llmq top` after its first refresh: it waits for the replicas that refresh saw
    nc = await nats.connect(stack.nats_url)
    os.kill(loaded.proc.pid, signal.SIGSTOP)
    try:
        look = asyncio.create_task(
            snapshot.snapshot(nc, nc.jetstream(), 4.0, apis=[api["id"] for api in apis])
        )
        await asyncio.sleep(1.0)
    finally:
        os.kill(loaded.proc.pid, signal.SIGCONT)
    try:
        assert len((await look).apis) == 2
    finally:
        await nc.close()
