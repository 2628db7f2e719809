"""State that survives a restart (issue 28 point 5), against real servers.

`llmq dev --data-dir` keeps Valkey's data (append-only file) beside NATS's: stopped and
started again, the `dev` tenant keeps its id, its keys still work, and an async job's result
stored before the restart is still served to the tenant's keys. A Valkey that comes back
without llmq's data (no persistence, a new server) is noticed: `/ready` fails on
`redis_data` until the data is restored.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.embedded import EmbeddedRedis, free_port
from tests.e2e.test_jobs import chat, wait_job
from tests.stack import unique, wait_for


class Dev:
    """`llmq dev` on fixed ports and a data dir, as a process group."""

    def __init__(self, tmp: Path, port: int, nats_port: int, redis_port: int, run: int) -> None:
        self.log = tmp / f"dev-{run}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmq.cli", "dev", "--port", str(port),
                 "--nats-port", str(nats_port), "--redis-port", str(redis_port),
                 "--data-dir", str(tmp / "data")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=clean,
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while "llmq is running" not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.1)
        self.key = re.findall(r"Bearer (\S+)\"", self.text())[0]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


async def test_llmq_dev_restarted_keeps_tenants_keys_and_results(tmp_path: Path) -> None:
    port, nats_port, redis_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    first = Dev(tmp_path, port, nats_port, redis_port, 1)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            auth = {"authorization": f"Bearer {first.key}"}
            resp = await client.post("/v1/jobs", json=chat("echo", "kept"), headers=auth)
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            done = await wait_job(client, job_id, **auth)
            assert done["result"]["choices"][0]["message"]["content"] == "kept"
            before = (await client.get("/v1/jobs", headers=auth)).json()
    finally:
        first.stop()
    second = Dev(tmp_path, port, nats_port, redis_port, 2)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for key in (first.key, second.key):  # the old key still works; the new one too
                again = await client.get(
                    f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {key}"}
                )
                assert again.status_code == 200, again.text
                assert again.json()["result"] == done["result"]
            listed = await client.get("/v1/jobs", headers={"authorization": f"Bearer {first.key}"})
            assert listed.json()["data"] == before["data"]
            ready = await client.get("/ready")
            assert ready.status_code == 200 and "redis_data" not in ready.json(), ready.text
    finally:
        second.stop()
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()


async def test_ready_fails_while_valkey_has_lost_llmqs_data(
    own_nats: Any, stack: Any, tmp_path: Path
) -> None:
    valkey = EmbeddedRedis(tmp_path / "valkey", extra=["--appendonly", "yes"])
    port = valkey.port
    stack.nats_url, stack.redis_url = own_nats.url, valkey.url
    try:
        store = TenantStore(connect(valkey.url))
        await store.create(Tenant(name=unique("kept")))
        api = await stack.api(auth_mode="keys")
        marker = api.app.state.data_marker

        async def ready() -> httpx.Response:
            async with httpx.AsyncClient(timeout=5) as client:
                return await client.get(f"{api.url}/ready")

        await wait_for(lambda: marker.value is not None, timeout=10)
        assert (await ready()).status_code == 200
        # Valkey's data lost: the server comes back empty on the same port
        valkey.stop()
        shutil.copytree(tmp_path / "valkey", tmp_path / "backup")
        valkey = EmbeddedRedis(tmp_path / "empty", port=port)

        async def unready() -> bool:
            resp = await ready()
            return resp.status_code == 503 and resp.json()["failing"] == ["redis_data"]

        await wait_for(unready, timeout=10)
        body = (await ready()).json()
        assert body["redis"] is True and "lost its data" in body["redis_data"]
        # restored from the backup: ready again, the tenants back
        valkey.stop()
        valkey = EmbeddedRedis(tmp_path / "backup", port=port, extra=["--appendonly", "yes"])
        await wait_for(lambda: _ok(ready), timeout=10)
        assert len(await TenantStore(connect(valkey.url)).list_tenants()) == 1
    finally:
        valkey.stop()


async def _ok(ready: Any) -> bool:
    try:
        return bool((await ready()).status_code == 200)
    except httpx.HTTPError:
        return False
