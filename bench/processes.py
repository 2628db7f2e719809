"""Starting and waiting for the processes a benchmark measures (shared by the bench scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child process with `env` added to ours, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_until_served(
    url: str, needle: str, timeout: float = 30, headers: dict[str, str] | None = None
) -> None:
    """Poll `url` until its body contains `needle` (e.g. a model in /v1/models; `headers`:
    the key or tenant header, which /v1/models needs when the api has tenants)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if needle in (await client.get(url, headers=headers)).text:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def stop_all(procs: list[subprocess.Popen[bytes]], *servers: object) -> None:
    """Terminate the measured processes, then the embedded servers (anything with `stop()`)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    for server in servers:
        server.stop()  # type: ignore[attr-defined]
