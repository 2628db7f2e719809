"""Starting llmq parts for tests: in-process (fast, inspectable) or as real OS processes
(for SIGKILL and CLI tests). Everything binds to free loopback ports, in a way that holds on a
busy machine: a server in this process listens on a socket bound before its port is known
(`bound_socket`), a server process that finds its port taken is started on another one
(`llmq.embedded.listen_on`, `Stack.api_process`), and a port where nothing may listen stays
bound without listening (`refused_port`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from llmq.api.server import uvicorn_config
from llmq.embedded import PORT_ATTEMPTS, die_with_parent, free_port
from llmq.schemas.settings import Settings
from llmq.worker.main import Worker

FAST = {"heartbeat": 0.5, "ping_interval": 0.3, "ack_wait": 2.0, "pull_expires": 2.0}
"""Protocol timings shrunk so failure tests finish quickly; api and workers must agree."""

DEFAULTS = {**FAST, "auth_mode": "none", "shutdown_grace": 2.0}
"""Tests that are not about tenants run without them; tenancy tests set auth_mode. Open
streams get 2 s when an api stops."""


def settings(nats_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"nats_url": nats_url, "redis_url": redis_url, **DEFAULTS}
    values.update(overrides)
    return Settings(**values)


def bound_socket() -> socket.socket:
    """A loopback TCP socket bound to a port the kernel chose, for a server of this process
    to listen on: no other process can take the port between choosing it and listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


_REFUSING: list[socket.socket] = []
"""The sockets behind `refused_port`, held until the test process exits."""


def refused_port() -> int:
    """A loopback port that refuses connections for as long as the tests run: bound and
    never listening, so no other process can start listening there meanwhile (a port
    released at once, as `free_port` gives, may be any server's a moment later)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return int(sock.getsockname()[1])


def api_on_its_own_socket(nats_url: str, redis_url: str, **overrides: Any) -> InProcessApi:
    """An in-process api, not started yet, that will listen on a socket bound for it now."""
    sock = bound_socket()
    config = settings(nats_url, redis_url, port=sock.getsockname()[1], **overrides)
    return InProcessApi(config, sock)


class InProcessApi:
    """An api on `config.api.port`; pass `sock` (`bound_socket`) to listen on a socket
    bound to that port already."""

    def __init__(self, config: Settings, sock: socket.socket | None = None) -> None:
        self.settings = config
        self.server = uvicorn.Server(uvicorn_config(config))
        self.app = self.server.config.app.app  # behind the start gate: the HotPaths app
        self.task: asyncio.Task[None] | None = None
        self.sock = sock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api.port}"

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def start(self) -> InProcessApi:
        self.server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        sockets = [self.sock] if self.sock is not None else None
        self.task = asyncio.create_task(self.server.serve(sockets=sockets))
        deadline = time.monotonic() + 30
        while not (self.server.started and self.started):
            if self.task.done():
                self.task.result()
            startup = getattr(self.app.state, "startup", None)
            if startup is not None and startup.failed:
                raise RuntimeError(f"api gave up starting: {startup.failed}")
            if time.monotonic() > deadline:
                raise RuntimeError("api did not start")
            await asyncio.sleep(0.02)
        return self

    @property
    def started(self) -> bool:
        """The port is open and the api connected and provisioned (api/startup.py)."""
        startup = getattr(self.app.state, "startup", None)
        return startup is not None and startup.ready

    async def stop(self) -> None:
        """As on SIGTERM: open streams get `shutdown_grace`, then the lifespan shuts down.
        Cancelling the server instead would skip the lifespan, and its consumers would go on
        taking messages meant for later tests."""
        self.server.should_exit = True
        if self.task is not None:
            # generous: a loaded machine (two xdist workers on two cores) stops slowly
            limit = self.settings.api.shutdown_grace + 30
            try:
                await asyncio.wait_for(asyncio.shield(self.task), limit)
            except TimeoutError:
                raise TimeoutError(f"api stop outlasted {limit} s; waiting: {waits()}") from None
        if self.sock is not None:
            self.sock.close()


def waits() -> list[str]:
    """Where each pending task of llmq's waits (innermost llmq frame of its await chain): what
    a stop that outlasted its deadline was stuck on."""
    root = str(Path(__file__).resolve().parent.parent)
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        here = ""
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            code = coro.cr_frame.f_code
            if code.co_filename.startswith(root) and "/.venv/" not in code.co_filename:
                here = f"{code.co_filename[len(root) + 1 :]}:{coro.cr_frame.f_lineno}"
            coro = coro.cr_await
        if here:
            found.append(f"{task.get_name()} at {here}")
    return found


def unique(prefix: str = "m") -> str:
    """A name no other test uses (models, tenants): tests share one nats-server and Valkey."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll `predicate` (plain or async) until it is true. The default deadline is generous:
    it costs nothing when the condition comes quickly, and a loaded machine is slow."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def one_shot_http(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 request on a connection of its own (`Connection: close`), read to its
    end: the status and the headers (names in lower case). For bursts of hundreds of requests
    at once: an httpx pool that large spends seconds of this process's CPU finding a free
    connection for each request, time the test's schedule and its other clients then lack."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        await reader.read()  # to the end of the response: the server closes the connection
        fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        return int(head[0].split()[1]), {k.lower(): v for k, v in fields.items()}
    finally:
        writer.close()


async def start_worker(config: Settings) -> Worker:
    worker = Worker(config)
    await worker.start()
    return worker


async def models_of(api_url: str, headers: dict[str, str] | None = None) -> set[str]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{api_url}/v1/models", headers=headers)
        if resp.status_code == 503:  # still starting (api/startup.py)
            return set()
        return {m["id"] for m in resp.json()["data"]}


async def wait_serving(
    api_url: str, model: str, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> None:
    """Wait until an api (often a process still starting) lists `model` in /v1/models
    (`headers`: the key, when the api has tenants)."""

    async def serving() -> bool:
        try:
            return model in await models_of(api_url, headers)
        except httpx.HTTPError:
            return False

    await wait_for(serving, timeout=timeout)


class Process:
    """`llmq <args>` as a child process, in its own process group, output to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = 0
        """Where it serves, when it is an api started by `Stack.api_process`."""
        self.log_path = log_path
        self._terminated = False
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmq.cli", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(5)

    def terminate(self) -> None:
        """SIGTERM, once (`stop` waits for it): a stack's processes stop side by side."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:  # stopped: all of it is on disk
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serving_on(self, port: int, timeout: float = 60.0) -> bool:
        """Wait until this `llmq api` answers `/health` on `port` from its own socket (True)
        or exits because another process took the port first (False), at any log level.
        Anything else it exits with is raised."""

        async def up() -> bool:
            return self.proc.poll() is not None or await _answers(self.proc.pid, port)

        await wait_for(up, timeout, interval=0.1)
        if self.proc.poll() is None:
            self.port = port
            return True
        if "address already in use" in self.output():
            self.stop()
            return False
        raise RuntimeError(f"llmq api exited with {self.proc.returncode}:\n{self.output()}")


async def _answers(pid: int, port: int) -> bool:
    """Process `pid` listens on `port` and `/health` there says 200: its own server (a port
    found free may have gone to another one, which may answer too) and serving."""
    if not _listens(pid, port):
        return False
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _listens(pid: int, port: int) -> bool:
    """Process `pid` holds a TCP socket listening on `port` (Linux's /proc: the listening
    sockets' inodes, then the process's file descriptors)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                _, local, _, state, *rest = row.split()
                if state == "0A" and int(local.rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{rest[5]}]")
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


def start_dev(
    argv: Callable[[], list[str]],
    log: Path,
    ready: str = "llmq is running",
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """`llmq dev` (the command line `argv()` gives: it picks the ports, and is called again
    for every try) in its own session, once its log says `ready`. A port found free can be
    taken before `llmq dev` binds it: then it is started again on others."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=env, cwd=cwd, preexec_fn=die_with_parent(),
            )  # fmt: skip
        if _dev_ready(proc, log, ready, timeout):
            return proc
        taken = "in use" in log.read_text(errors="replace")  # its own check, or a bind
        if not taken or attempt == PORT_ATTEMPTS:
            raise AssertionError(log.read_text(errors="replace"))
    raise AssertionError("unreachable")


def _dev_ready(proc: subprocess.Popen[bytes], log: Path, ready: str, timeout: float) -> bool:
    """True once `ready` is in the log; False if it exited first (its group is killed)."""
    deadline = time.monotonic() + timeout
    try:
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # a child it left behind
                return False
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return True


def env_for(nats_url: str, redis_url: str, **extra: Any) -> dict[str, str]:
    values = {"nats_url": nats_url, "redis_url": redis_url, **DEFAULTS, **extra}
    return {f"LLMQ_{k.upper()}": str(v) for k, v in values.items()}


__all__ = [
    "InProcessApi",
    "Process",
    "api_on_its_own_socket",
    "bound_socket",
    "env_for",
    "free_port",
    "models_of",
    "one_shot_http",
    "refused_port",
    "settings",
    "start_dev",
    "start_worker",
    "wait_for",
    "wait_serving",
]
