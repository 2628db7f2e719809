"""Session-wide real servers: one nats-server (JetStream) and one Redis-compatible server,
each on a free port with data in a temp dir, stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from llmq._fast import configure as configure_fast_paths
from llmq.embedded import EmbeddedNats, EmbeddedRedis, nats_cluster
from tests import bytecode
from tests.redis_ha import EmbeddedSentinelSet, start_redis_cluster
from tests.scheduling import auto_workers, slowest_first


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, `timeout`) stops the run as Ctrl-C does: the fixtures'
    finalizers stop every server. A run killed outright leaves none either: the servers get
    SIGTERM when the process that started them dies (`llmq.embedded.die_with_parent`).

    Before any worker starts, the project's bytecode is written once (tests/bytecode.py)."""
    signal.signal(signal.SIGTERM, _interrupted)
    if hasattr(config, "workerinput"):
        bytecode.keep_rewritten_tests()
    else:
        bytecode.prepare()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): as many workers as the machine has room for now."""
    return auto_workers()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, so that none is left to run alone at the end."""
    slowest_first(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The collected suite's heap frozen (`gc.freeze`, as `LLMQ_GC_FREEZE_THRESHOLD` freezes an
    api's start-up heap): a worker holds about 525k objects after collection (an api about
    100k), and a full collection walking them all took 2.7-5.5 s on a busy machine, holding
    every in-process replica and client of the test that set it off."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("nats")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


_LLMQ_TASKS = (
    "provisioner", "registry-", "heartbeat", "scheduler", "breaker-probe", "models-file",
    "result-collector", "webhooks", "async-jobs", "batch", "queue-estimate", "api-start",
    "worker-start", "data-marker", "redis-wait",
)  # fmt: skip
"""Names of the background tasks api and worker start; none may outlive a test's stack."""


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of one test alone, for tests that stop or restart it. Request it before
    `stack` (so it is stopped after) and point `stack.nats_url` at it."""
    server = EmbeddedNats(tmp_path / "own-nats")
    yield server
    server.stop()


@pytest.fixture
def own_nats_cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    """Three nats-servers routed as one JetStream cluster, for this test alone (tests kill
    nodes). Request it before `stack` and set `stack.nats_url = cluster_url(nodes)`."""
    nodes = nats_cluster(tmp_path / "nats-cluster", size=3)
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
async def stack(nats_server: EmbeddedNats, redis_server: EmbeddedRedis, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory for in-process apis and workers on the session's servers; all stopped after."""
    from llmq.embedded import PORT_ATTEMPTS
    from tests import stack as stack_module
    from tests.stack import (
        InProcessApi,
        Process,
        api_on_its_own_socket,
        env_for,
        settings,
        start_worker,
    )

    class Stack:
        def __init__(self) -> None:
            self.apis: list[InProcessApi] = []
            self.workers: list[object] = []
            self.processes: list[Process] = []
            self.nats_url = nats_server.url
            self.redis_url = redis_server.url

        async def api(self, **overrides: object) -> InProcessApi:
            api = await api_on_its_own_socket(self.nats_url, self.redis_url, **overrides).start()
            self.apis.append(api)
            return api

        async def api_process(self, *args: str, **env: object) -> Process:
            """`llmq api <args>` as a process, serving on a free port (`.port`, `.url`):
            started again on another when the one found was taken before it bound it."""
            for _ in range(PORT_ATTEMPTS):
                port = stack_module.free_port()
                proc = self.process("api", "--port", str(port), *args, **env)
                if await proc.serving_on(port):
                    return proc
            raise RuntimeError(f"no free port for an api in {PORT_ATTEMPTS} attempts")

        async def worker(self, **overrides: object):  # type: ignore[no-untyped-def]
            worker = await start_worker(settings(self.nats_url, self.redis_url, **overrides))
            self.workers.append(worker)
            return worker

        def process(self, *args: str, **env: object) -> Process:
            proc = Process(
                list(args),
                env_for(self.nats_url, self.redis_url, **env),
                tmp_path / f"proc-{len(self.processes)}.log",
            )
            self.processes.append(proc)
            return proc

    s = Stack()
    yield s
    for proc in s.processes:
        proc.terminate()
    for proc in s.processes:
        proc.stop()
    stop_errors: list[BaseException] = []  # raised after the clean-up, which must still run
    for worker in s.workers:
        try:
            await worker.close()  # type: ignore[attr-defined]
        except Exception as exc:
            stop_errors.append(exc)
    for api in s.apis:
        try:
            await api.stop()
        except Exception as exc:
            stop_errors.append(exc)
    # A connection left reconnecting would go on running in the session's one event loop.
    left_open = [w for w in s.workers if not w.nc.is_closed]  # type: ignore[attr-defined]
    left_open += [a for a in s.apis if not a.runtime.nc.is_closed]
    left_tasks = [
        t for t in asyncio.all_tasks() if not t.done() and t.get_name().startswith(_LLMQ_TASKS)
    ]
    # Fail this test, but clean up first: what it leaked must not fail every later test.
    ncs = [w.nc for w in left_open if hasattr(w, "nc")] + [
        a.runtime.nc for a in left_open if isinstance(a, InProcessApi)
    ]
    for nc in ncs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
    for task in left_tasks:
        task.cancel()
    if left_tasks:
        await asyncio.wait(left_tasks, timeout=5)
    assert not stop_errors, f"stopping an api or worker failed: {stop_errors!r}"
    assert not left_open, f"still connected to NATS after stopping: {left_open}"
    left_running = [t.get_name() for t in left_tasks]
    assert not left_running, f"background tasks still running after stopping: {left_running}"


# --- servers with credentials and TLS (tests/dispatcher/test_connection_auth.py, ...) ------


class Pki:
    """A CA and the certificates it signed, as PEM files: `server` for 127.0.0.1,
    `client` for mutual TLS; `other_ca` signed nothing here (a wrong CA)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca, self.ca_key = root / "ca.pem", root / "ca.key"
        self.other_ca = root / "other-ca.pem"
        self.server, self.server_key = root / "server.pem", root / "server.key"
        self.client, self.client_key = root / "client.pem", root / "client.key"

    def _openssl(self, *args: str) -> None:
        import subprocess

        subprocess.run(["openssl", *args], cwd=self.root, check=True, capture_output=True)

    def make(self) -> Pki:
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        for ca, key, name in ((self.ca, self.ca_key, "llmq-test-ca"),
                              (self.other_ca, self.root / "other-ca.key", "other-ca")):  # fmt: skip
            self._openssl("req", "-x509", *ec, "-keyout", str(key), "-out", str(ca),
                          "-days", "2", "-subj", f"/CN={name}")  # fmt: skip
        for cert, key, ext in (
            (self.server, self.server_key,
             "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            (self.client, self.client_key, "extendedKeyUsage=clientAuth\n"),
        ):  # fmt: skip
            csr, extfile = cert.with_suffix(".csr"), cert.with_suffix(".ext")
            extfile.write_text(ext)
            self._openssl("req", *ec, "-keyout", str(key), "-out", str(csr),
                          "-subj", f"/CN={cert.stem}")  # fmt: skip
            self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca),
                          "-CAkey", str(self.ca_key), "-CAcreateserial", "-out", str(cert),
                          "-days", "2", "-extfile", str(extfile))  # fmt: skip
        return self


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates, made once per session with the `openssl` binary."""
    return Pki(Path(tmp_path_factory.mktemp("pki"))).make()


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedNats]]:
    """Factory: a nats-server of one test with extra configuration (`authorization`, `tls`).
    Request it before `stack`, so its servers stop after the stack's processes."""
    servers: list[EmbeddedNats] = []

    def start(config: str) -> EmbeddedNats:
        server = EmbeddedNats(tmp_path / f"secured-nats-{len(servers)}", config=config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- Redis/Valkey that survives a node (tests/api/test_redis_sentinel.py, _cluster.py) -----


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[EmbeddedSentinelSet]:
    """A master, a replica and three sentinels of one test (it may kill the master), ready
    to fail over. Request it before `stack`, so its servers stop after the stack."""
    servers = EmbeddedSentinelSet(tmp_path / "sentinel-set")
    try:
        servers.wait_ready()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedRedis]]:
    """Three cluster-enabled masters with the 16384 slots split between them."""
    nodes = start_redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster")))
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def fast_paths_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For the tests of a shortcut itself (llmq/_fast): its gate open, whatever
    LLMQ_FAST_PATHS says (`make test-public-paths` runs the end-to-end paths without), also
    for the processes and settings the test builds."""
    monkeypatch.setenv("LLMQ_FAST_PATHS", "1")
    configure_fast_paths(True)
    yield
    configure_fast_paths(None)
