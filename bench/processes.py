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


_TICKS = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    """Every live process's children, from one scan of /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads, from /proc/PID/stat;
    a process that has exited counts 0: take the tree before and after with the same pids)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICKS


def rss_kib(pids: list[int]) -> int:
    """Resident set size in KiB, summed over these processes (VmRSS in /proc/PID/status)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def load_average() -> str:
    """The 1-minute load average, to print next to every figure on a shared machine."""
    return Path("/proc/loadavg").read_text().split()[0]
