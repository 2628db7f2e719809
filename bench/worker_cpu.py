"""The worker's own CPU per job, measured in process with `time.process_time`.

Runs the job runner's real path, from the job's body to the last reply frame (request decode,
backend, reply building, frame encoding) and, on the "whole job" line, from the JetStream
message to the metrics (`JobRunner.run`: its headers parsed as nats-py does with llmq's
parser, the envelope, the ack, the accepted frame, the usage report, the job book and the
Prometheus series), with the two sockets replaced by in-memory
stand-ins: a NATS client whose publish only keeps the bytes, and for the openai backend an
upstream that answers what `bench/mock_upstream.py` answers (its 7-event SSE stream, or its
JSON body when asked for no stream). So only the worker's own work is timed, not the load of
the machine, which makes the figure comparable between two trees measured back to back:

    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/worker_cpu.py [--jobs 20000] [--rounds 5]

Prints the best and median µs per job of each path over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from bench.mock_upstream import _chunks, _completion  # noqa: E402

try:  # the "before" tree of an A/B run has nats-py's parser only
    from llmq._fast.nats import parse_header_lines
except ImportError:  # pragma: no cover
    parse_header_lines = Client._parse_header_lines
from llmq.schemas import names  # noqa: E402
from llmq.schemas.envelope import JobEnvelope  # noqa: E402
from llmq.schemas.registry import WorkerInfo  # noqa: E402
from llmq.worker.backends.base import BackendConfig  # noqa: E402
from llmq.worker.backends.echo import EchoBackend  # noqa: E402
from llmq.worker.backends.openai import OpenAIBackend  # noqa: E402
from llmq.worker.metrics import JobBook, WorkerMetrics  # noqa: E402
from llmq.worker.replies import FrameSender  # noqa: E402
from llmq.worker.runner import JobOutcome, JobRunner, _Ack  # noqa: E402

MESSAGES = [{"role": "user", "content": "hello from the mock"}]


class _Nats:
    """Publishes nowhere: keeps the last frame so nothing is optimised away."""

    max_payload = 1 << 20

    def __init__(self) -> None:
        self.last = b""
        self.frames = 0

    async def publish(self, subject: str, data: bytes = b"", headers: Any = None) -> None:
        self.last = data
        self.frames += 1


class _Msg:
    async def ack(self) -> None:
        return None


class _MockUpstream:
    """`Upstream` without a socket: the mock's answers, fed to the backend's parser."""

    def __init__(self) -> None:
        self.lines = b"".join(_chunks("gpt-4o-mini")).decode().split("\n")
        self.whole = _completion("gpt-4o-mini")

    async def stream(
        self, url: str, body: Callable[[], bytes], parser: Any, params: Any = None
    ) -> AsyncIterator[Any]:
        body()
        for line in self.lines:
            for out in parser.feed(line):
                yield out
            if parser.done:
                return
        for out in parser.eof():
            yield out

    async def post(self, url: str, body: Callable[[], bytes], params: Any = None) -> bytes:
        body()
        return self.whole

    async def aclose(self) -> None:
        return None


def _runner(backend: Any, nc: _Nats) -> JobRunner:
    return JobRunner(nc, backend, "w-bench", {}, 5.0, max_deliver=3)  # type: ignore[arg-type]


async def _jobs(backend: Any, body: bytes, jobs: int) -> float:
    """µs of CPU per job over `jobs` jobs run one after the other."""
    nc = _Nats()
    runner = _runner(backend, nc)
    envelope = JobEnvelope(id="0123456789abcdef", model="bench", reply="_INBOX.x.y")
    start = time.process_time()
    for _ in range(jobs):
        sender = FrameSender(nc, "_INBOX.x.y", "w-bench")  # type: ignore[arg-type]
        outcome = JobOutcome(envelope, "ok")
        await runner._execute(body, "chat", sender, _Ack(_Msg()), outcome)  # type: ignore[arg-type]
    spent = time.process_time() - start
    assert nc.frames == jobs, "one done frame per non-streamed job"
    json.loads(nc.last)  # the last frame is one whole JSON document
    return spent / jobs * 1e6


async def _whole_jobs(backend: Any, body: bytes, jobs: int) -> float:
    """µs of CPU per job through `JobRunner.run`, from the message's raw headers (parsed as
    nats-py parses them) to the job book and its Prometheus series."""
    nc = _Nats()
    book = JobBook(["bench"])
    WorkerMetrics(book, lambda: WorkerInfo(id="w-bench", backend="openai", models=[], capacity=1))
    runner = JobRunner(
        nc, backend, "w-bench", {}, 5.0, max_deliver=3, on_outcome=book.record, track=book.track
    )  # type: ignore[arg-type]
    deadline = int((time.time() + 3600) * 1000)
    raw = b"NATS/1.0\r\n" + b"".join(
        f"{name}: {value}\r\n".encode()
        for name, value in JobEnvelope(
            id="0123456789abcdef", model="bench", tenant="acme", reply="_INBOX.x.y",
            deadline_ms=deadline,
        ).to_headers().items()
    ) + b"\r\n"  # fmt: skip
    subject = names.jobs_subject("bench")
    start = time.process_time()
    for i in range(jobs):
        headers = parse_header_lines(raw[len(b"NATS/1.0\r\n") :])
        reply = f"$JS.ACK.LLMQ_JOBS.jobs-bench.1.{i + 1}.{i + 1}.1764337000000000000.0"
        msg = Msg(nc, subject=subject, reply=reply, data=body, headers=headers)  # type: ignore[arg-type]
        await runner.run(msg)
    spent = time.process_time() - start
    assert nc.frames >= 3 * jobs, "accepted, done and the ack of every job"
    return spent / jobs * 1e6


def _openai() -> Any:
    backend = OpenAIBackend(BackendConfig(kind="openai", url="http://127.0.0.1:9/v1"))
    backend._upstream = _MockUpstream()  # type: ignore[assignment]
    return backend


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = json.dumps({"model": "bench", "messages": MESSAGES}).encode()
    paths = {"echo, non-streamed": EchoBackend(BackendConfig()), "openai, non-streamed": _openai()}
    lines = [(name, _jobs, backend) for name, backend in paths.items()]
    lines.append(("openai, whole job", _whole_jobs, _openai()))
    for name, measure, backend in lines:
        await measure(backend, body, 500)  # warm up
        runs = [await measure(backend, body, args.jobs) for _ in range(args.rounds)]
        print(
            f"{name:24} best {min(runs):6.1f} µs/job  median {statistics.median(runs):6.1f} µs/job"
            f"  ({args.rounds} rounds of {args.jobs} jobs)"
        )


if __name__ == "__main__":
    asyncio.run(main())
