"""Session-wide real servers: one nats-server (JetStream) and one Redis-compatible server,
each on a free port with data in a temp dir, stopped at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.embedded import EmbeddedNats, EmbeddedRedis, nats_cluster


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
    "result-collector", "webhooks", "async-jobs", "batch",
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
    from tests.stack import InProcessApi, Process, env_for, free_port, settings, start_worker

    class Stack:
        def __init__(self) -> None:
            self.apis: list[InProcessApi] = []
            self.workers: list[object] = []
            self.processes: list[Process] = []
            self.nats_url = nats_server.url
            self.redis_url = redis_server.url

        async def api(self, **overrides: object) -> InProcessApi:
            config = settings(self.nats_url, self.redis_url, port=free_port(), **overrides)
            api = await InProcessApi(config).start()
            self.apis.append(api)
            return api

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
        proc.stop()
    for worker in s.workers:
        await worker.close()  # type: ignore[attr-defined]
    for api in s.apis:
        await api.stop()
    # A connection left reconnecting would go on running in the session's one event loop.
    left_open = [w for w in s.workers if not w.nc.is_closed]  # type: ignore[attr-defined]
    left_open += [a for a in s.apis if not a.runtime.nc.is_closed]
    assert not left_open, f"still connected to NATS after stopping: {left_open}"
    left_running = [
        t.get_name()
        for t in asyncio.all_tasks()
        if not t.done() and t.get_name().startswith(_LLMQ_TASKS)
    ]
    assert not left_running, f"background tasks still running after stopping: {left_running}"
