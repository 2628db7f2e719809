"""Start-up on a forming cluster (issue 28 point 1): a fresh 3-node nats-server cluster, and
at the same moment 2 apis and 3 workers (R3 everywhere), ten times over. Right after the
nodes start, JetStream has no meta leader yet and answers with timeouts, "no suitable
peers for placement" or no stream; every process must wait (with backoff, saying what for)
and come up, every time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai

from llmq.embedded import cluster_url, nats_cluster
from tests.stack import api_on_its_own_socket, refused_port, settings, unique, wait_for

ROUNDS = 10
AT_ONCE = 2
"""Rounds run side by side (each its own cluster, processes and model): the wait for a
cluster to elect its leaders is mostly idle time. Five at once took 17 s instead of 47 on
its own, but with two busy loops beside the suite an api's stop then outlasted its 32 s."""
APIS, WORKERS = 2, 3
ENV: dict[str, Any] = {"nats_replicas": 3, "startup_timeout": 120.0}


async def _round(base: Path, redis_url: str, model: str) -> float:
    """One fresh cluster and the five processes started with it; seconds until all serve."""
    nodes = nats_cluster(base, size=3)  # returns once each node listens: no leader yet
    started = time.monotonic()
    url = cluster_url(nodes)
    apis = [api_on_its_own_socket(url, redis_url, **ENV) for _ in range(APIS)]
    workers: list[Any] = []
    try:
        from llmq.worker.main import Worker

        workers = [Worker(settings(url, redis_url, model=[model], **ENV)) for _ in range(WORKERS)]
        await asyncio.gather(*(a.start() for a in apis), *(w.start() for w in workers))
        for api in apis:
            await wait_for(lambda a=api: len(a.runtime.registry.workers_for(model)) == WORKERS)
            client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="-", max_retries=0)
            async with client:
                reply = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "formed"}]
                )
            assert reply.choices[0].message.content == "formed"
        return time.monotonic() - started
    finally:
        await _stop_all(workers, apis, nodes)


async def _stop_all(workers: list[Any], apis: list[Any], nodes: list[Any]) -> None:
    """Every process of a round stopped even when one stop fails (its error raised after):
    an api left running would leak its tasks into the next test of this process."""
    stops = [w.close for w in workers] + [a.stop for a in apis if a.task is not None]
    errors = []
    for stop in stops:
        try:
            await stop()
        except Exception as exc:
            errors.append(exc)
    for node in nodes:
        node.stop()
    if errors:
        raise errors[0]


async def test_two_apis_and_three_workers_start_with_a_forming_cluster_ten_times(
    redis_server: Any, tmp_path: Path
) -> None:
    times: list[float] = []
    for first in range(0, ROUNDS, AT_ONCE):
        times += await asyncio.gather(
            *(
                _round(tmp_path / f"round-{i}", redis_server.url, unique("form"))
                for i in range(first, min(first + AT_ONCE, ROUNDS))
            )
        )
    print(f"{ROUNDS} fresh clusters, {APIS} apis + {WORKERS} workers each: all up every time; "
          f"seconds to serving: {', '.join(f'{t:.1f}' for t in times)}")  # fmt: skip
    assert len(times) == ROUNDS


async def test_api_and_worker_wait_for_llmq_provision_and_give_up_at_their_deadline(
    own_nats: Any, redis_server: Any, caplog: Any
) -> None:
    """LLMQ_NATS_PROVISION=false on a fresh NATS: the streams do not exist yet. The api and
    the worker wait, saying what is missing, and come up once `llmq provision` ran. A worker
    that cannot reach NATS gives up at LLMQ_STARTUP_TIMEOUT."""
    from llmq.provision import provision
    from llmq.worker.main import Worker

    model = unique("prov")
    env = {"nats_provision": False, "startup_timeout": 60.0}
    api = api_on_its_own_socket(own_nats.url, redis_server.url, **env)
    worker = Worker(settings(own_nats.url, redis_server.url, model=[model], **env))
    started = asyncio.gather(api.start(), worker.start())
    try:
        await wait_for(lambda: "run `llmq provision`" in caplog.text, timeout=20)
        assert not api.started
        import nats

        nc = await nats.connect(own_nats.url)
        try:
            await provision(nc.jetstream(), settings(own_nats.url, redis_server.url))
        finally:
            await nc.close()
        await asyncio.wait_for(started, 30)
        await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=10)
    finally:
        await worker.close()
        if api.task is not None:
            await api.stop()
    nowhere = f"nats://127.0.0.1:{refused_port()}"
    given_up = Worker(settings(nowhere, redis_server.url, model=[model], startup_timeout=1.0))
    began = time.monotonic()
    try:
        await given_up.start()
    except TimeoutError as exc:
        assert "waiting for NATS at" in str(exc)
    else:
        raise AssertionError("a worker started without NATS")
    assert time.monotonic() - began < 10
