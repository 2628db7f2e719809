"""`llmq provision` makes every stream and bucket `llmq/provision.py` names, at the
replica count asked for, idempotently; with `--watch` it makes them again after a NATS
restart lost the memory ones, and stops at once on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import nats

from llmq.embedded import EmbeddedNats
from llmq.provision import PROVISIONED
from llmq.schemas import names
from tests.stack import Process, wait_for


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "LLMQ_NATS_URL": url, "LLMQ_JOBS_MAX_AGE": "600"}


async def _streams(url: str) -> dict[str, float]:
    """Stream name -> max_age, as the server has them."""
    nc = await nats.connect(url)
    try:
        return {
            s.config.name or "": s.config.max_age or 0 for s in await nc.jetstream().streams_info()
        }
    finally:
        await nc.close()


async def test_provision_makes_everything_once_and_again(own_nats: EmbeddedNats) -> None:
    for _ in range(2):  # the second run finds everything and changes nothing
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "llmq.cli", "provision"],
            env=_env(own_nats.url), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "provisioned" in done.stderr + done.stdout
    made = await _streams(own_nats.url)
    assert set(made) == set(PROVISIONED)
    assert made[names.JOBS_STREAM] == 600.0  # the settings it was given


async def test_watch_provisions_again_after_a_restart_and_stops_on_sigterm(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    proc = Process(["provision", "--watch"], _env(own_nats.url), tmp_path / "provision.log")
    try:
        await wait_for(lambda: _has_all(own_nats.url), timeout=60, interval=0.2)
        own_nats.restart()  # memory streams (LLMQ_JOBS, KV_LLMQ_WORKERS) are gone
        assert names.JOBS_STREAM not in await _streams(own_nats.url)
        # one provisioning round makes them one after another: wait for the whole round
        await wait_for(lambda: _has_all(own_nats.url), timeout=60, interval=0.2)
        assert f"KV_{names.WORKERS_BUCKET}" in await _streams(own_nats.url)
        started = time.monotonic()
        assert await asyncio.to_thread(proc.stop, 10) == 0, proc.output()
        assert time.monotonic() - started < 5
    finally:
        proc.stop()


async def _has_all(url: str) -> bool:
    return set(PROVISIONED) <= set(await _streams(url))
