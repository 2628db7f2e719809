"""Starting and waiting for the processes a benchmark measures (shared by the bench scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmq.api.tenancy import Price, Tenant, TenantStore, connect
from llmq.embedded import EmbeddedNats, EmbeddedRedis, free_port


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


@dataclass
class Stack:
    """A running llmq for a benchmark: its servers, processes and where to call it."""

    tmp: Path
    nats: EmbeddedNats
    redis: EmbeddedRedis
    api_port: int
    mock_port: int
    key: str
    """An API key of the bench tenant ('' without `tenant`)."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def roots(self) -> dict[str, int]:
        """Part name -> pid of its process tree, for CPU and memory per process."""
        roots = {name: proc.pid for name, proc in self.procs.items() if name != "mock"}
        return {**roots, "nats": self.nats.proc.pid, "valkey": self.redis.proc.pid}


async def bench_tenant(redis_url: str) -> str:
    """A tenant with every limit set (high), so the quota script takes its longest path;
    returns an API key of it."""
    redis = connect(redis_url)
    try:
        store = TenantStore(redis)
        big = 10**12
        await store.create(
            Tenant(
                name="bench", rpm=big, tpm=big, max_concurrent=10**6, daily_tokens=big,
                monthly_tokens=big, spend_budget_usd=1e9,
            )
        )  # fmt: skip
        key, _ = await store.create_key("bench")
        return key
    finally:
        await redis.aclose()


async def priced_bench_tenant(store: TenantStore) -> None:
    """Tenant `bench` for model `bench-model` (with a price), every limit set high: the
    quota scripts' longest path, for the benches that call them in process."""
    await store.create(
        Tenant(
            name="bench", models=["bench-model"], rpm=10**9, tpm=10**12, max_concurrent=10**6,
            daily_tokens=10**12, monthly_tokens=10**12, spend_budget_usd=10**9,
        )
    )  # fmt: skip
    await store.set_price("bench-model", Price(input_per_1m=0.5, output_per_1m=1.5))


@contextlib.asynccontextmanager
async def llmq_stack(
    *,
    backend: str = "echo",
    tenant: bool = False,
    capacity: int = 64,
    mock: Callable[[int], list[str]] | None = None,
    backend_url: Callable[[int], str] = lambda port: f"http://127.0.0.1:{port}/v1",
    env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    wrap: Callable[[str], list[str]] | None = None,
    model: str = "bench",
) -> AsyncIterator[Stack]:
    """nats-server and Valkey on free ports, `mock` (argv given its port) when asked, one
    api and one `backend` worker for `model`; ready (the model listed) when entered, all
    stopped on exit. `wrap(part)`: a prefix for the api's or worker's python command line
    (e.g. a profiler). The logs stay in a temp folder if the run fails."""
    tmp = Path(tempfile.mkdtemp(prefix="llmq-bench-"))
    nats = EmbeddedNats(tmp / "nats")
    redis = EmbeddedRedis(tmp / "redis")
    stack = Stack(tmp, nats, redis, free_port(), free_port(), "")
    base = {
        "LLMQ_NATS_URL": nats.url,
        "LLMQ_REDIS_URL": redis.url,
        "LLMQ_LOG_LEVEL": "WARNING",
        "LLMQ_AUTH_MODE": "keys" if tenant else "none",
        **(env or {}),
    }
    try:
        if tenant:
            stack.key = await bench_tenant(redis.url)
        if mock is not None:
            stack.procs["mock"] = spawn(mock(stack.mock_port), {}, tmp / "mock.log")

        def llmq(part: str) -> list[str]:
            prefix = wrap(part) if wrap else [sys.executable]
            return [*prefix, "-m", "llmq.cli", part]

        api = [*llmq("api"), "--host", "127.0.0.1", "--port", str(stack.api_port)]
        stack.procs["api"] = spawn(api, base, tmp / "api.log")
        worker = [*llmq("worker"), "--model", model, "--capacity", str(capacity)]
        wenv = {**base, **(worker_env or {})}
        if backend != "echo":
            wenv.setdefault("LLMQ_BACKEND_URL", backend_url(stack.mock_port))
        worker += ["--backend", backend]
        stack.procs["worker"] = spawn(worker, wenv, tmp / "worker.log")
        auth = {"authorization": f"Bearer {stack.key}"} if stack.key else None
        await wait_until_served(stack.url("/v1/models"), f'"{model}"', headers=auth)
        yield stack
    finally:
        stop_all(list(stack.procs.values()), nats, redis)
    shutil.rmtree(tmp, ignore_errors=True)  # reached only after a clean run
