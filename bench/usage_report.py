"""What the durable usage report costs a worker per job: encoding the
`FinalUsage` and the core publish that LLMQ_USAGE captures, sequential, against a local
nats-server with the stream in place. Starts its own server on a free port.

    .venv/bin/python bench/usage_report.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmq.dispatcher import streams  # noqa: E402
from llmq.embedded import EmbeddedNats  # noqa: E402
from llmq.schemas import names  # noqa: E402
from llmq.schemas.envelope import JobEnvelope  # noqa: E402
from llmq.schemas.openai import Usage  # noqa: E402
from llmq.worker.usage_report import report_final_usage  # noqa: E402


async def run(url: str, n: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await streams.ensure_usage_stream(js)
    job = JobEnvelope(id="0" * 32, model="bench", tenant="acme", reply="_INBOX.bench.x")
    usage = Usage(12, 34, 46)
    for _ in range(1000):  # warm-up
        await report_final_usage(nc, job, "ok", usage)
    started = time.perf_counter()
    for _ in range(n):
        await report_final_usage(nc, job, "ok", usage)
    elapsed = time.perf_counter() - started
    await nc.flush()
    stored, deadline = 0, time.monotonic() + 10
    while stored < n + 1000 and time.monotonic() < deadline:  # JetStream stores them async
        await asyncio.sleep(0.1)
        stored = (await js.stream_info(names.USAGE_STREAM)).state.messages
    print(f"report_final_usage: {elapsed / n * 1e6:.1f} us per job ({n} jobs, {stored} stored)")
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp))
        try:
            asyncio.run(run(server.url, args.n))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
