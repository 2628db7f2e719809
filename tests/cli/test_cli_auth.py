"""The command line connects as the processes do: credentials from the environment or files,
never from a flag; a refusal ends the command at once with a clear message; `llmq dev`
protects its own servers with secrets it generates."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from llmq.dispatcher.connection import NatsRefused, connect, disconnect
from llmq.embedded import EmbeddedNats, EmbeddedRedis, free_port
from llmq.schemas.settings import ConnectionSettings
from tests.stack import start_dev, unique

TOKEN = "cli-" + uuid.uuid4().hex
PASSWORD = "redis-" + uuid.uuid4().hex


def llmq(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def token_nats(tmp_path: Path) -> Any:
    server = EmbeddedNats(tmp_path / "nats", config=f'authorization {{ token: "{TOKEN}" }}')
    yield server
    server.stop()


@pytest.fixture
def password_redis(tmp_path: Path) -> Any:
    server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD)
    yield server
    server.stop()


def test_status_uses_the_credentials_from_the_environment(token_nats: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ok = llmq(
        "status", "--json", LLMQ_NATS_URL=token_nats.url, LLMQ_NATS_TOKEN_FILE=str(token_file)
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["nats_url"] == token_nats.url
    ok = llmq("workers", "--json", LLMQ_NATS_URL=token_nats.url, LLMQ_NATS_TOKEN=TOKEN)
    assert ok.returncode == 0, ok.stderr


def test_a_token_in_the_url_from_the_environment_is_never_shown(token_nats: Any) -> None:
    with_token = token_nats.url.replace("nats://", f"nats://{TOKEN}@")
    for args in (("status",), ("status", "--json")):
        out = llmq(*args, LLMQ_NATS_URL=with_token)
        assert out.returncode == 0, out.stderr
        assert token_nats.url in out.stdout and TOKEN not in out.stdout + out.stderr


@pytest.mark.parametrize("command", ["status", "top", "workers", "jobs"])
def test_ops_commands_without_credentials_fail_fast_and_clearly(
    token_nats: Any, command: str
) -> None:
    started = time.monotonic()
    out = (
        llmq(command, "--iterations", "1", LLMQ_NATS_URL=token_nats.url)
        if command == "top"
        else (llmq(command, LLMQ_NATS_URL=token_nats.url))
    )
    assert time.monotonic() - started < 30
    assert out.returncode == 1
    assert f"NATS at {token_nats.url} refused" in out.stderr
    assert "Authorization Violation" in out.stderr


def test_no_secret_in_a_url_flag(token_nats: Any, password_redis: Any) -> None:
    with_token = token_nats.url.replace("nats://", f"nats://{TOKEN}@")
    out = llmq("status", "--nats-url", with_token)
    assert out.returncode == 2 and "no credentials in --nats-url" in out.stderr
    assert TOKEN not in out.stderr
    with_password = password_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    out = llmq("tenants", "list", "--redis-url", with_password)
    assert out.returncode == 2 and "no password in --redis-url" in out.stderr
    out = llmq("worker", "--backend", "echo", "--model", "m", "--nats-url", with_token)
    assert out.returncode != 0 and "no credentials in --nats-url" in out.stderr
    assert TOKEN not in out.stderr


def test_worker_and_api_with_a_wrong_token_exit_with_the_reason(
    token_nats: Any, password_redis: Any
) -> None:
    env = {
        "LLMQ_NATS_URL": token_nats.url,
        "LLMQ_NATS_TOKEN": "wrong-" + TOKEN[:8],
        "LLMQ_REDIS_URL": password_redis.url,
        "LLMQ_REDIS_PASSWORD": PASSWORD,
        "LLMQ_AUTH_MODE": "none",
    }
    out = llmq("worker", "--backend", "echo", "--model", "m", **env)
    assert out.returncode == 1
    assert f"NATS at {token_nats.url} refused" in out.stderr
    assert "wrong-" not in out.stderr + out.stdout
    out = llmq("api", "--port", str(free_port()), **env)
    assert out.returncode == 3
    assert "refused" in out.stderr + out.stdout
    assert "wrong-" not in out.stderr + out.stdout and PASSWORD not in out.stderr + out.stdout


def test_tenants_use_the_redis_password(password_redis: Any, tmp_path: Path) -> None:
    password_file = tmp_path / "redis.pw"
    password_file.write_text(PASSWORD + "\n")
    env = {"LLMQ_REDIS_URL": password_redis.url}
    name = unique("t")
    ok = llmq("tenants", "create", name, LLMQ_REDIS_PASSWORD_FILE=str(password_file), **env)
    assert ok.returncode == 0, ok.stderr
    ok = llmq("tenants", "list", LLMQ_REDIS_PASSWORD=PASSWORD, **env)
    assert ok.returncode == 0 and name in ok.stdout
    with_url = {"LLMQ_REDIS_URL": password_redis.url.replace("redis://", f"redis://:{PASSWORD}@")}
    assert llmq("tenants", "list", **with_url).returncode == 0
    out = llmq("tenants", "list", **env)
    assert (
        out.returncode == 2 and f"Redis at {password_redis.url} requires a password" in out.stderr
    )
    out = llmq("tenants", "list", LLMQ_REDIS_PASSWORD="wrong", **env)
    assert out.returncode == 2 and "refused the password: check LLMQ_REDIS_PASSWORD" in out.stderr
    assert PASSWORD not in out.stderr


def test_llmq_dev_runs_its_servers_with_generated_secrets(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    log = tmp_path / "dev.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    ports: list[int] = []

    def argv() -> list[str]:
        ports[:] = [free_port()]
        return [
            sys.executable, "-m", "llmq.cli", "dev", "--port", str(ports[0]),
            "--data-dir", str(data),
        ]  # fmt: skip

    env = {**clean, "LLMQ_NATS_TOKEN": "from-the-caller", "LLMQ_ADMIN_TOKEN": TOKEN}
    proc = start_dev(argv, log, env=env)
    port = ports[0]
    try:
        time.sleep(0.3)
        text = log.read_text()
        token_file, password_file = data / "nats.token", data / "redis.password"
        token, password = token_file.read_text().strip(), password_file.read_text().strip()
        for secret_file in (token_file, password_file):
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(token) >= 32 and token not in text and password not in text
        # The caller's own admin token is used, never echoed.
        assert TOKEN not in text and "admin token           yours" in text
        assert f"LLMQ_NATS_TOKEN_FILE={token_file}" in text
        nats_url = re.search(r"nats-server (nats://\S+)", text).group(1)  # type: ignore[union-attr]
        # Without the token NATS refuses; with it, it answers; the stack serves as before.
        with pytest.raises(NatsRefused):
            asyncio.run(connect(nats_url, "outsider", timeout=2.0, conn=ConnectionSettings()))
        asyncio.run(_connect_and_close(nats_url, token))
        status = llmq(
            "status", "--json", LLMQ_NATS_URL=nats_url, LLMQ_NATS_TOKEN_FILE=str(token_file)
        )
        assert status.returncode == 0, status.stderr
        assert any(w["models"] == ["echo"] for w in json.loads(status.stdout)["workers"])
        key = re.search(r"Bearer (\S+)\"", text).group(1)  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        reply = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "secured dev"}]
        )
        assert reply.choices[0].message.content == "secured dev"
        argv = _argv_of_every_process()
        assert any(arg.endswith("nats-server") for arg in argv), argv
        assert all(token not in arg and password not in arg for arg in argv)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)


async def _connect_and_close(url: str, token: str) -> None:
    nc = await connect(url, "insider", timeout=2.0, conn=ConnectionSettings(nats_token=token))
    assert nc.is_connected
    await disconnect(nc)


def _argv_of_every_process() -> list[str]:
    """Every argument of every process on the machine, as `ps` shows them to anyone."""
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True)
    return out.stdout.split()
