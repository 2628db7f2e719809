"""Throughput of the Batch API: a JSONL batch against the `echo` backend, end to end.

Starts its own nats-server and Redis-compatible server (free ports), api(s) and worker(s) as
separate processes, uploads a batch file, creates the batch and polls it until it is
completed; prints the time from create to completed (validation, dispatch, the worker
runs, result collection, finalization with the output file) and lines per second. Checks
that every request is in the output file exactly once.

    .venv/bin/python bench/batch.py                        # 1,000 lines, no tenants
    .venv/bin/python bench/batch.py --lines 5000 --quota   # with a tenant: quota per line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import spawn, stop_all, wait_until_served  # noqa: E402
from llmq.embedded import EmbeddedNats, EmbeddedRedis, free_port  # noqa: E402


def batch_file(lines: int, words: int) -> bytes:
    out = []
    for i in range(lines):
        text = " ".join(f"w{i}-{k}" for k in range(words))
        body = {"model": "bench", "messages": [{"role": "user", "content": text}]}
        line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
        out.append(json.dumps({**line, "body": body}))
    return ("\n".join(out) + "\n").encode()


async def run_batch(url: str, data: bytes, headers: dict[str, str]) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
        upload_started = time.monotonic()
        resp = await client.post(
            "/v1/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"}
        )
        resp.raise_for_status()
        uploaded = time.monotonic()
        body = {
            "input_file_id": resp.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        batch = (await client.post("/v1/batches", json=body)).json()
        created = time.monotonic()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.05)
            batch = (await client.get(f"/v1/batches/{batch['id']}")).json()
        done = time.monotonic()
        assert batch["status"] == "completed", batch
        output = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).text
        ids = [json.loads(line)["custom_id"] for line in output.splitlines()]
        lines = data.count(b"\n")
        assert sorted(ids) == sorted(f"r{i}" for i in range(lines)), "not exactly once"
        return {
            "upload_s": uploaded - upload_started,
            "create_to_completed_s": done - created,
            "lines_per_s": lines / (done - created),
            "server_s": float(batch["completed_at"] - batch["created_at"]),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--words", type=int, default=8, help="answer length (echo tokens)")
    parser.add_argument("--capacity", type=int, default=64, help="per worker")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--apis", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quota", action="store_true", help="a tenant, quota checks per line")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llmq-bench-batch-"))
    nats = EmbeddedNats(tmp / "nats")
    redis = EmbeddedRedis(tmp / "redis")
    env = {"LLMQ_NATS_URL": nats.url, "LLMQ_REDIS_URL": redis.url, "LLMQ_LOG_LEVEL": "WARNING"}
    headers: dict[str, str] = {}
    if args.quota:
        from llmq.api.tenancy import Tenant, TenantStore, connect

        client = connect(redis.url)
        await TenantStore(client).create(Tenant(name="bench"))
        await client.aclose()
        env |= {"LLMQ_AUTH_MODE": "header", "LLMQ_TRUSTED_TENANTS": "bench"}
        headers = {"X-Tenant-ID": "bench"}
    else:
        env["LLMQ_AUTH_MODE"] = "none"
    llmq = [sys.executable, "-m", "llmq.cli"]
    ports = [free_port() for _ in range(args.apis)]
    procs = [
        spawn([*llmq, "api", "--port", str(port)], env, tmp / f"api-{port}.log") for port in ports
    ]
    procs += [
        spawn(
            [*llmq, "worker", "--model", "bench", "--capacity", str(args.capacity)],
            env,
            tmp / f"worker-{i}.log",
        )
        for i in range(args.workers)
    ]
    try:
        url = f"http://127.0.0.1:{ports[0]}"
        await wait_until_served(f"{url}/v1/models", '"bench"', headers=headers)
        data = batch_file(args.lines, args.words)
        print(
            f"lines={args.lines} words={args.words} workers={args.workers}x{args.capacity} "
            f"apis={args.apis} quota={args.quota} cores={os.cpu_count()} "
            f"file={len(data) / 1e6:.2f} MB"
        )
        print(f"{'run':<5}{'upload s':>10}{'create→completed s':>20}{'lines/s':>10}")
        for run in range(1, args.runs + 1):
            r = await run_batch(url, data, headers)
            print(
                f"{run:<5}{r['upload_s']:>10.3f}{r['create_to_completed_s']:>20.3f}"
                f"{r['lines_per_s']:>10.0f}"
            )
    finally:
        stop_all(procs, nats, redis)
    shutil.rmtree(tmp, ignore_errors=True)  # reached only after a clean run: logs stay otherwise


if __name__ == "__main__":
    asyncio.run(main())
