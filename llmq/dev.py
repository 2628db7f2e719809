"""`llmq dev`: the whole stack on one machine, from the project's own dependencies.

nats-server and the Redis-compatible server get free ports and a data dir; the api and one
echo worker run as child processes. Ctrl-C (or SIGTERM) stops every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmq.dev_banner import Banner
from llmq.embedded import (
    EmbeddedNats,
    EmbeddedRedis,
    MissingServer,
    die_with_parent,
    nats_server_binary,
    redis_server_binary,
    write_private,
)
from llmq.schemas.settings import Settings

_CONNECTION_SECRETS = frozenset(
    f"LLMQ_{name}"
    for name in (
        "NATS_CREDS",
        "NATS_NKEY",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_PASSWORD_FILE",
        "NATS_TOKEN",
        "NATS_TOKEN_FILE",
        "NATS_TLS_CA",
        "NATS_TLS_CERT",
        "NATS_TLS_KEY",
        "REDIS_PASSWORD",
        "REDIS_PASSWORD_FILE",
        "REDIS_TLS_CA",
    )
)
"""The caller's connection credentials: dev's own servers take only the ones it generated."""


@dataclass(frozen=True)
class DevSecrets:
    """A fresh NATS token and Redis password per run, each also in a 0600 file of the data
    dir: the servers demand them, the api and worker get them in their environment, and
    the terminal shows only where the files are (the secrets stay out of scrollback)."""

    root: Path
    nats_token: str
    redis_password: str

    @classmethod
    def generate(cls, root: Path) -> DevSecrets:
        made = cls(root, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        write_private(made.nats_token_file, made.nats_token + "\n")
        write_private(made.redis_password_file, made.redis_password + "\n")
        return made

    @property
    def nats_token_file(self) -> Path:
        return self.root / "nats.token"

    @property
    def redis_password_file(self) -> Path:
        return self.root / "redis.password"


def _wait_ready(
    base: str, timeout: float, children: list[subprocess.Popen[bytes]], key: str | None
) -> bool:
    deadline = time.monotonic() + timeout
    # /v1/models needs the key when the api has tenants.
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{base}/v1/models", headers=headers)
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(request, timeout=1) as resp:
                if b'"echo"' in resp.read():
                    return True
        time.sleep(0.1)
    return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run_dev(
    settings: Settings, data_dir: str | None = None, nats_port: int = 0, redis_port: int = 0
) -> int:
    """Run the stack until Ctrl-C. `nats_port`, `redis_port`: where the servers listen
    (0 = a free port); `data_dir`: their data, the secrets files (default: a temp dir)."""
    refused = _refusal(settings, nats_port, redis_port)
    if refused is not None:
        print(f"llmq dev: {refused[1]}", file=sys.stderr)
        return refused[0]
    root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="llmq-dev-"))
    root.mkdir(parents=True, exist_ok=True)
    dev_secrets = DevSecrets.generate(root)
    admin_token = settings.api.admin_token or secrets.token_urlsafe(24)
    nats = EmbeddedNats(
        root / "nats",
        port=nats_port,
        config=f'authorization {{ token: "{dev_secrets.nats_token}" }}',
    )
    # Valkey keeps its data (append-only file, synced every second) in the data dir: a
    # restart keeps tenants, keys, quotas and the usage ledger.
    redis = EmbeddedRedis(
        root / "redis", port=redis_port, password=dev_secrets.redis_password, extra=PERSIST
    )
    env = _child_env(settings, nats, redis, dev_secrets, admin_token)
    key = dev_key(env)
    children = _start_children(settings, env)
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host
    base = f"http://{host}:{settings.api.port}"
    code = 0
    try:
        print(f"nats-server {nats.url}  redis {redis.url}  data {root}", flush=True)
        if _wait_ready(base, 30, children, key):
            banner = _banner(settings, base, key, admin_token, (nats, redis, dev_secrets))
            print(banner.text(), flush=True)
        else:
            print("llmq dev: the api or worker failed to start", file=sys.stderr, flush=True)
            return 1
        watched = {"api": children[0], "worker": children[1]}
        code = _watch({**watched, "nats-server": nats.proc, "redis": redis.proc}, lambda: stop)
    finally:
        _stop(children)
        nats.stop()
        redis.stop()
        print("llmq dev: stopped", flush=True)
    return code


def _banner(
    settings: Settings,
    base: str,
    key: str | None,
    admin_token: str,
    servers: tuple[EmbeddedNats, EmbeddedRedis, DevSecrets],
) -> Banner:
    """What `llmq dev` prints once the stack answers: where to call it, with what."""
    nats, redis, dev_secrets = servers
    return Banner(
        base=base,
        key=key,
        admin_token=admin_token,
        admin_token_generated=not settings.api.admin_token,
        console=settings.console.console_enabled,
        nats_url=nats.url,
        redis_url=redis.url,
        nats_token_file=dev_secrets.nats_token_file,
        redis_password_file=dev_secrets.redis_password_file,
    )


def _child_env(
    settings: Settings,
    nats: EmbeddedNats,
    redis: EmbeddedRedis,
    dev_secrets: DevSecrets,
    admin_token: str,
) -> dict[str, str]:
    """The api's and the worker's environment: this one without its connection secrets,
    and the embedded servers' addresses and secrets."""
    return {
        **{k: v for k, v in os.environ.items() if k not in _CONNECTION_SECRETS},
        "LLMQ_NATS_URL": nats.url,
        "LLMQ_NATS_TOKEN": dev_secrets.nats_token,
        "LLMQ_REDIS_URL": redis.url,
        "LLMQ_REDIS_PASSWORD": dev_secrets.redis_password,
        "LLMQ_HOST": settings.api.host,
        "LLMQ_PORT": str(settings.api.port),
        "LLMQ_ADMIN_TOKEN": admin_token,
    }


def _refusal(settings: Settings, nats_port: int, redis_port: int) -> tuple[int, str] | None:
    """(exit code, why) when the stack cannot start: a port in use, a server binary missing."""
    api = settings.api
    taken = [
        (flag, port)
        for flag, host, port in (
            ("--port", api.host, api.port),
            ("--nats-port", "127.0.0.1", nats_port),
            ("--redis-port", "127.0.0.1", redis_port),
        )
        if port and not _port_free(host, port)
    ]
    if taken:
        flag, port = taken[0]
        return 1, f"port {port} is in use; pick another with {flag}"
    try:
        nats_server_binary(), redis_server_binary()
    except MissingServer as exc:
        return 2, str(exc)
    return None


def _start_children(settings: Settings, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """The api and one echo worker, as `llmq` processes."""
    llmq = [sys.executable, "-m", "llmq.cli"]
    worker = [
        *("worker", "--backend", "echo", "--model", "echo"),
        *("--capacity", str(settings.worker.capacity)),
        *("--echo-delay", str(settings.backend.echo.delay)),
    ]
    return [
        subprocess.Popen([*llmq, "api"], env=env, preexec_fn=die_with_parent()),
        subprocess.Popen([*llmq, *worker], env=env, preexec_fn=die_with_parent()),
    ]


def _watch(watched: dict[str, subprocess.Popen[bytes]], stopped: Callable[[], bool]) -> int:
    """Until `stopped()`: 0; or 1 as soon as one of them exits (nothing works without any)."""
    while not stopped():
        gone = [name for name, proc in watched.items() if proc.poll() is not None]
        if gone:  # say which, and stop them all
            print(f"llmq dev: {', '.join(gone)} exited; stopping", file=sys.stderr, flush=True)
            return 1
        time.sleep(0.2)
    return 0


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()


DEV_TENANT = "dev"
PERSIST = ["--appendonly", "yes", "--appendfsync", "everysec"]
"""Valkey's own persistence for `llmq dev` (given after EmbeddedRedis's `--appendonly no`)."""


def dev_key(env: dict[str, str]) -> str | None:
    """Create the `dev` tenant (no limits) and a fresh key for it; None when auth is off."""
    if env.get("LLMQ_AUTH_MODE", "keys") != "keys":
        return None

    async def create() -> str:
        from llmq.api.tenancy import Tenant, TenantStore, connect

        redis = connect(env["LLMQ_REDIS_URL"], password=env.get("LLMQ_REDIS_PASSWORD", ""))
        try:
            store = TenantStore(redis)
            if await store.get(DEV_TENANT) is None:
                await store.create(Tenant(name=DEV_TENANT))
            key, _ = await store.create_key(DEV_TENANT, label="llmq dev")
            return key
        finally:
            await redis.aclose()

    return asyncio.run(create())
