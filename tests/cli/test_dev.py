"""`llmq dev` runs the whole stack and Ctrl-C leaves nothing running; `llmq api` and
`llmq worker` run as separate processes configured by flags or LLMQ_ variables."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from llmq.embedded import free_port
from tests.stack import start_dev, wait_serving


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_dev(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, int, int, int]:
    """`llmq dev` on free ports in its own session, once it says it is running: the
    process, its log and the api, nats-server and Redis ports."""
    ports: list[int] = []

    def argv() -> list[str]:
        ports[:] = [free_port(), free_port(), free_port()]
        return [
            sys.executable, "-m", "llmq.cli", "dev", "--port", str(ports[0]),
            "--nats-port", str(ports[1]), "--redis-port", str(ports[2]),
            "--data-dir", str(tmp_path / "data"),
        ]  # fmt: skip

    log = tmp_path / "dev.log"
    proc = start_dev(argv, log)
    return proc, log, ports[0], ports[1], ports[2]


def _none_left(proc: subprocess.Popen[bytes]) -> bool:
    """No process of `llmq dev`'s session is left."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_llmq_dev_serves_and_ctrl_c_stops_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, log, port, nats_port, redis_port = _start_dev(tmp_path)
    try:
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/v1" in text
        assert "curl" in text and "from openai import OpenAI" in text
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=_printed_key(text))
        reply = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "dev mode works"}]
        )
        assert reply.choices[0].message.content == "dev mode works"
        first = next(line for line in text.splitlines() if line.startswith("nats-server "))
        servers = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", first)]
        assert servers == [nats_port, redis_port] and all(_listening(p) for p in servers)
        assert (tmp_path / "data" / "nats.token").is_file(), "the data dir given"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(30) == 0
        time.sleep(0.3)
        assert not _listening(port)
        assert not any(_listening(p) for p in servers)
        assert _none_left(proc), "a child of llmq dev is still running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _pids_of(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(entry))
    return pids


def test_llmq_dev_stops_everything_when_its_nats_server_dies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, log, port, nats_port, redis_port = _start_dev(tmp_path)
    try:
        (nats_pid,) = [p for p in _pids_of(f"-p {nats_port} ") if p != proc.pid]
        os.kill(nats_pid, signal.SIGKILL)
        assert proc.wait(30) == 1
        assert "nats-server exited; stopping" in log.read_text()
        time.sleep(0.3)
        assert not _listening(port) and not _listening(redis_port)
        assert _none_left(proc), "a child of llmq dev is still running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_llmq_dev_refuses_a_taken_server_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "dev", "--port", str(free_port()),
             "--redis-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"port {port} is in use; pick another with --redis-port" in done.stderr


def _printed_key(text: str) -> str:
    match = re.search(r"(sk-llmq-[A-Za-z0-9_\-]+)", text)
    return match.group(1) if match else "unused"


async def test_api_and_worker_processes_from_flags_and_env(stack) -> None:  # type: ignore[no-untyped-def]
    # nats/redis URLs come from LLMQ_ variables (set by stack.process), the rest from flags.
    api = await stack.api_process("--host", "127.0.0.1")
    worker = stack.process("worker", "--backend", "echo", "--model", "proc-echo", "--capacity", "4")
    url = api.url
    await wait_serving(url, "proc-echo")
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    reply = await client.chat.completions.create(
        model="proc-echo", messages=[{"role": "user", "content": "two processes"}]
    )
    assert reply.choices[0].message.content == "two processes"
    await client.close()
    assert worker.stop() == 0
    assert api.stop() == 0


def _commands(text: str) -> list[str]:
    """The banner's indented commands, each paragraph (backslash-continued) as one."""
    body = text[text.index("llmq is running") :]
    paragraphs = re.split(r"\n\s*\n", body)
    wanted = ("curl ", ".venv/bin/python ", "LLMQ_NATS_URL=", "LLMQ_REDIS_URL=")
    found = []
    for paragraph in paragraphs:
        for command in re.split(r"\n(?=  \S)", paragraph):
            if command.strip().startswith(wanted):
                found.append(command.strip())
    return found


def test_the_banner_prints_commands_that_work_as_printed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """From the project directory, with nothing of the venv on PATH, as after `make dev`."""
    root = Path(__file__).resolve().parents[2]
    venv_python = root / ".venv" / "bin" / "python"
    if Path(sys.executable).parent != venv_python.parent:
        pytest.skip("run the tests with the project's .venv (make test)")
    log = tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["PATH"] = "/usr/bin:/bin"  # no venv: the banner must not rely on `llmq` being found
    ports: list[int] = []

    def argv() -> list[str]:
        ports[:] = [free_port()]
        return [str(root / ".venv" / "bin" / "llmq"), "dev", "--port", str(ports[0])]

    proc = start_dev(argv, log, "Press Ctrl-C", env=env, cwd=root)
    port = ports[0]
    try:
        text = log.read_text()
        base = f"http://127.0.0.1:{port}"
        token = re.search(r"admin token +(\S+)", text).group(1)  # type: ignore[union-attr]
        assert f"console               {base}/ui" in text
        assert "source .venv/bin/activate" in text and "natscli/releases" in text
        commands = _commands(text)
        assert [c.split()[0] for c in commands][:2] == ["curl", ".venv/bin/python"], commands
        assert len(commands) == 4, commands
        outputs = []
        for command in commands:
            done = subprocess.run(
                ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            outputs.append(done.stdout)
        assert json.loads(outputs[0])["choices"][0]["message"]["content"] == "hello llmq"
        assert outputs[1].strip() == "hi there"
        assert outputs[2].startswith("llmq at nats://127.0.0.1:") and "echo" in outputs[2]
        assert outputs[3].split()[0] == "NAME" and "\ndev " in outputs[3]
        with httpx.Client(base_url=base, timeout=10) as client:
            tenants = client.get("/admin/tenants", headers={"Authorization": f"Bearer {token}"})
            assert tenants.status_code == 200 and "dev" in tenants.text
            assert client.get("/ui").status_code == 200
            login = client.post("/ui/api/login", json={"token": token})
            assert login.status_code == 200, login.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
