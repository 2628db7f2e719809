"""The api's CPU per job publish: nats-py's `js.publish` (a request) against the publish whose
ack lands in the job's mailbox (`dispatcher.publish.publish_to_inbox`), A/B in one run.

Starts its own nats-server (a free loopback port) with llmq's streams, one reply inbox as the
api has, and publishes jobs the way `Dispatcher.submit` does (`--concurrency` publishers at
once), alternating the two ways round by round. CPU is this process's `time.process_time`
per publish (the api's share) and nats-server's from /proc; the server's work is the same
for both (one stored message, one ack):

    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/publish_cpu.py [--jobs 4000] [--rounds 6]

Also prints nats-py's header parse and header encoding against llmq's (`llmq/_fast/nats.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nats.aio.client import Client  # noqa: E402

from bench.processes import cpu_seconds  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq._fast import nats as headers  # noqa: E402
from llmq._fast.nats import parse_header_lines  # noqa: E402
from llmq.dispatcher import streams  # noqa: E402
from llmq.dispatcher.connection import connect, disconnect  # noqa: E402
from llmq.dispatcher.inbox import ReplyInbox  # noqa: E402
from llmq.dispatcher.jobs import JobSpec, new_job_id  # noqa: E402
from llmq.dispatcher.publish import publish_job, publish_to_inbox  # noqa: E402
from llmq.embedded import EmbeddedNats  # noqa: E402
from llmq.schemas import names  # noqa: E402

BODY = b'{"model":"bench","messages":[{"role":"user","content":"hello from the mock"}]}'

Publish = Callable[[ReplyInbox, JobSpec], Awaitable[int]]


def _request(nc: Client) -> Publish:
    js = nc.jetstream()

    async def publish(inbox: ReplyInbox, spec: JobSpec) -> int:
        reply = inbox.subject(spec.job_id)
        inbox.open(spec.job_id)
        try:
            until = spec.deadline_ms / 1000
            ack = await publish_job(
                js, spec.subject, spec.body, spec.headers(reply), 2.0, until=until
            )
        finally:
            inbox.close(spec.job_id)
        return ack.seq

    return publish


def _to_inbox(nc: Client) -> Publish:
    async def publish(inbox: ReplyInbox, spec: JobSpec) -> int:
        reply = inbox.subject(spec.job_id)
        box = inbox.open(spec.job_id)
        try:
            headers = spec.headers(reply)
            until = spec.deadline_ms / 1000
            ack = await publish_to_inbox(
                nc, spec.subject, spec.body, headers, reply, box=box, timeout=2.0, until=until
            )
        finally:
            inbox.close(spec.job_id)
        return ack.seq

    return publish


async def _round(
    publish: Publish, inbox: ReplyInbox, jobs: int, concurrency: int, server: int
) -> tuple[float, float]:
    """(api µs, nats-server µs) of CPU per publish over `jobs` publishes."""
    deadline = int((time.time() + 60) * 1000)
    specs = [JobSpec(new_job_id(), "bench", BODY, "acme", deadline) for _ in range(jobs)]
    queue = iter(specs)

    async def publisher() -> None:
        for spec in queue:
            await publish(inbox, spec)

    start, server_start = time.process_time(), cpu_seconds([server])
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    spent, server_spent = time.process_time() - start, cpu_seconds([server]) - server_start
    return spent / jobs * 1e6, server_spent / jobs * 1e6


def _headers() -> None:
    blocks = {
        "reply frame (2 headers)": b"Llmq-Frame: chunk\r\nLlmq-Seq: 12\r\n\r\n",
        "job (5 headers)": (
            b"Llmq-Job: 0123456789abcdef0123\r\nLlmq-Tenant: acme\r\n"
            b"Llmq-Reply: _INBOX.d67c278da5.0123456789abcdef0123\r\n"
            b"Llmq-Deadline: 1764337000000\r\nNats-Msg-Id: 0123456789abcdef0123\r\n\r\n"
        ),
    }
    for name, raw in blocks.items():
        assert Client._parse_header_lines(raw) == parse_header_lines(raw)
        n = 100_000
        theirs = min(timeit.repeat(lambda b=raw: Client._parse_header_lines(b), number=n, repeat=5))
        ours = min(timeit.repeat(lambda b=raw: parse_header_lines(b), number=n, repeat=5))
        print(f"header parse, {name:24} nats-py {theirs / n * 1e6:5.2f} µs  "
              f"llmq {ours / n * 1e6:5.2f} µs")  # fmt: skip


async def _encoding() -> None:
    """CPU per `_send_publish` with headers (an `accepted` frame), nats-py's and llmq's."""
    frame = {"Llmq-Frame": "accepted", "Llmq-Seq": "0", "Llmq-Worker": "w-0123456789"}
    for name, nc in (("nats-py", Client()), ("llmq", Client())):
        if name == "llmq":
            headers.install(nc)
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(50_000):
                nc._pending = []
                await nc._send_publish("_INBOX.abc.def", "", b"{}", 2, frame)
            best = min(best, (time.process_time() - start) / 50_000 * 1e6)
        print(f"publish with 3 headers, {name:7} {best:5.2f} µs")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    _headers()
    await _encoding()
    with tempfile.TemporaryDirectory(prefix="llmq-publish-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        try:
            nc = await connect(server.url, "bench-publish")
            js = nc.jetstream()
            await streams.ensure_streams(js, 60.0)
            inbox = ReplyInbox(nc, new_job_id()[:10])
            await inbox.start()
            ways = {"js.publish (request)": _request(nc), "ack to the inbox": _to_inbox(nc)}
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
            for publish in ways.values():  # warm up
                await _round(publish, inbox, 500, args.concurrency, server.proc.pid)
            for _ in range(args.rounds):
                for name, publish in ways.items():
                    await js.purge_stream(names.JOBS_STREAM)
                    pid = server.proc.pid
                    results[name].append(
                        await _round(publish, inbox, args.jobs, args.concurrency, pid)
                    )
            for name, runs in results.items():
                api = [a for a, _ in runs]
                nats = [n for _, n in runs]
                print(
                    f"{name:22} api best {min(api):6.1f} median {statistics.median(api):6.1f}"
                    f" µs/publish; nats-server median {statistics.median(nats):6.1f} µs"
                    f"  ({args.rounds} rounds of {args.jobs}, c={args.concurrency})"
                )
            await inbox.stop()
            await disconnect(nc)
        finally:
            server.stop()


if __name__ == "__main__":
    event_loop.run(main())
