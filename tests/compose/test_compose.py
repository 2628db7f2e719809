"""compose/ as deployed: NATS and Valkey publish no port and demand credentials; the worker
user of compose/nats/auth.conf can do its job (chat, async job, batch through a real
nats-server running that very file) and nothing else: it is refused the files, results,
tenant records and everyone else's replies.

Docker is not available here, so the YAML is parsed and checked, nats-server validates the
cluster config (`-t`), and the processes it would start run against the real permission
config."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest
import yaml

from llmq.dispatcher.connection import connect, disconnect
from llmq.embedded import EmbeddedNats, nats_server_binary, redis_server_binary
from llmq.schemas import names
from llmq.schemas.settings import ConnectionSettings
from tests.stack import unique, wait_for

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
WORKER_INBOX = "_INBOX_worker"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an operator runs before the first `up`: compose/make-secrets.sh."""
    out = Path(tmp_path_factory.mktemp("compose-secrets")) / "secrets"
    subprocess.run(["sh", str(COMPOSE / "make-secrets.sh"), str(out)], check=True, timeout=30)
    return out


def _users(secrets_dir: Path) -> dict[str, str]:
    text = (secrets_dir / "nats-users.conf").read_text()
    return dict(re.findall(r'LLMQ_(\w+)_PASSWORD: "([0-9a-f]+)"', text))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return loaded


# --- the YAML --------------------------------------------------------------------------------


def test_no_nats_or_valkey_port_on_the_host_and_no_secret_in_the_file() -> None:
    services = compose()["services"]
    for name, service in services.items():
        ports = [str(p) for p in service.get("ports", [])]
        if name.startswith(("nats", "valkey")):
            assert not ports, f"{name} publishes {ports}"
        assert not any(p.split(":")[-1] in ("4222", "8222", "6222", "6379") for p in ports)
    assert [p for s in services.values() for p in s.get("ports", [])] == ["8000:8000", "8001:8000"]
    for name, service in services.items():
        env = service.get("environment", {})
        for key, value in env.items():
            if re.search(r"PASSWORD$|TOKEN$|_KEY$", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
        assert "--nats-url" not in service.get("command", []), name
    raw = (COMPOSE / "docker-compose.yml").read_text()
    assert "requirepass" not in raw and "@nats-" not in raw and "@valkey" not in raw


def test_every_llmq_process_authenticates_with_compose_secrets() -> None:
    data = compose()
    services, declared = data["services"], data["secrets"]
    llmq = {n: s for n, s in services.items() if n.startswith(("api", "worker"))}
    assert llmq
    for name, service in llmq.items():
        env = service["environment"]
        user = env["LLMQ_NATS_USER"]
        assert user == ("api" if name.startswith("api") else "worker")
        secret_path = env["LLMQ_NATS_PASSWORD_FILE"]
        secret = secret_path.removeprefix("/run/secrets/")
        assert secret in service["secrets"] and secret in declared
        assert declared[secret]["file"].startswith("./secrets/")
        if user == "worker":
            assert env["LLMQ_NATS_INBOX_PREFIX"] == WORKER_INBOX
            assert not any(k.startswith("LLMQ_REDIS") for k in env)  # no Redis for workers
            assert "redis_password" not in service["secrets"]
        else:
            assert env["LLMQ_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
            assert "redis_password" in service["secrets"]
    valkey = services["valkey"]
    assert valkey["command"] == ["valkey-server", "/etc/valkey/valkey.conf"]
    assert "valkey_auth" in valkey["secrets"]
    assert "secrets/" in (COMPOSE / ".gitignore").read_text().split()


def test_the_cluster_config_is_valid_with_generated_secrets(
    secrets_dir: Path, tmp_path: Path
) -> None:
    etc = tmp_path / "etc-nats"
    etc.mkdir()
    for volume in compose()["services"]["nats-1"]["volumes"]:
        source, _, target = volume.partition(":")
        if source.startswith("./secrets/"):
            origin = secrets_dir / source.removeprefix("./secrets/")
        elif source.startswith("./"):
            origin = COMPOSE / source
        else:
            continue  # the data volume
        shutil.copy(origin, etc / Path(target.split(":")[0]).name)
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(etc / "nats.conf")],
        env={"NATS_NAME": "nats-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    routes = (etc / "routes.conf").read_text()
    assert routes.count("nats-route://route:") == 3


def test_valkey_config_requires_the_generated_password(secrets_dir: Path, tmp_path: Path) -> None:
    import redis

    from llmq.embedded import free_port

    port = free_port()
    conf = (COMPOSE / "valkey.conf").read_text()
    conf = conf.replace("/run/secrets/valkey_auth", str(secrets_dir / "valkey_auth"))
    conf = conf.replace("dir /data", f"dir {tmp_path}")
    (tmp_path / "valkey.conf").write_text(conf)
    proc = subprocess.Popen(
        [redis_server_binary(), str(tmp_path / "valkey.conf"), "--port", str(port),
         "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        password = (secrets_dir / "redis_password").read_text().strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis.Redis(port=port, password=password).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        proc.terminate()
        proc.wait(10)


# --- the permissions, on a real nats-server ------------------------------------------------


@pytest.fixture
def compose_nats(secrets_dir: Path, tmp_path: Path) -> Any:
    """nats-server on a free port with compose/nats/auth.conf (and the generated users)."""
    data = tmp_path / "compose-nats"
    data.mkdir()
    shutil.copy(COMPOSE / "nats" / "auth.conf", data / "auth.conf")
    shutil.copy(secrets_dir / "nats-users.conf", data / "users.conf")
    server = EmbeddedNats(data, config='include "auth.conf"')
    yield server
    server.stop()


def _violations(server: EmbeddedNats) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if "Violation" in line]


async def test_api_and_worker_users_serve_chat_jobs_and_batches(
    compose_nats: Any, secrets_dir: Path, stack: Any
) -> None:
    users = _users(secrets_dir)
    stack.nats_url = compose_nats.url
    model = unique("cmp")
    api = await stack.api(nats_user="api", nats_password=users["API"])
    (secrets_dir.parent / "worker.pw").write_text(users["WORKER"] + "\n")
    await stack.worker(
        model=[model],
        nats_user="worker",
        nats_password_file=str(secrets_dir.parent / "worker.pw"),
        nats_inbox_prefix=WORKER_INBOX,
    )
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    reply = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "least privilege"}], timeout=30
    )
    assert reply.choices[0].message.content == "least privilege"
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        body = {"model": model, "messages": [{"role": "user", "content": "later"}]}
        job = (await http.post("/v1/jobs", json=body)).json()
        deadline = time.monotonic() + 30
        while (done := (await http.get(f"/v1/jobs/{job['id']}")).json())["status"] in (
            "queued",
            "in_progress",
        ):
            assert time.monotonic() < deadline, done
            await asyncio.sleep(0.1)
    assert done["status"] == "completed", done
    assert done["result"]["choices"][0]["message"]["content"] == "later"
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    uploaded = await sdk.files.create(
        file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch"
    )
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 1  # type: ignore[union-attr]
    await sdk.close()
    # Everything above needed no right the worker user lacks.
    assert _violations(compose_nats) == []


async def test_the_worker_user_cannot_read_files_results_tenants_or_replies(
    compose_nats: Any, secrets_dir: Path, stack: Any
) -> None:
    users = _users(secrets_dir)
    stack.nats_url = compose_nats.url
    api = await stack.api(nats_user="api", nats_password=users["API"])
    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    secret_line = b'{"custom_id": "x", "body": {"messages": "tenant secret"}}\n'
    await sdk.files.create(file=("secret.jsonl", secret_line), purpose="batch")
    await sdk.close()

    worker = ConnectionSettings(
        nats_user="worker", nats_password=users["WORKER"], nats_inbox_prefix=WORKER_INBOX
    )
    nc = await connect(compose_nats.url, "nosy worker", 5.0, conn=worker)
    js = nc.jetstream(timeout=2.0)
    attempts = {
        "object store": js.object_store(names.FILES_OBJECT_STORE),
        "results": js.key_value(names.RESULTS_BUCKET),
        "async jobs": js.key_value(names.ASYNC_JOBS_BUCKET),
        "batches": js.key_value(names.BATCHES_BUCKET),
        "file records": js.key_value(names.FILE_META_BUCKET),
        "direct get": nc.request(
            f"$JS.API.DIRECT.GET.KV_{names.FILE_META_BUCKET}", b"{}", timeout=2.0
        ),
        "outcomes consumer": js.consumer_info(names.OUTCOMES_STREAM, names.COLLECTOR_CONSUMER),
        "jobs by message get": nc.request(
            f"$JS.API.STREAM.MSG.GET.{names.BATCH_STREAM}", b'{"seq": 1}', timeout=2.0
        ),
    }
    # At once: a refused request is only known when its 2 s run out.
    outcomes = await asyncio.gather(*attempts.values(), return_exceptions=True)
    for what, outcome in zip(attempts, outcomes, strict=True):
        assert isinstance(outcome, (nats.errors.Error, asyncio.TimeoutError)), (what, outcome)
    # Nor may it listen to the api's replies and requests, or inject jobs.
    await nc.subscribe("_INBOX.>")
    await nc.subscribe(f"{names.JOBS_PREFIX}.>")
    await nc.subscribe(f"{names.OUTCOME_PREFIX}.>")
    await nc.publish(names.jobs_subject("anything"), b"{}")
    await nc.flush()
    await disconnect(nc)
    refused = "\n".join(_violations(compose_nats))
    for subject in (
        f"$JS.API.STREAM.INFO.OBJ_{names.FILES_OBJECT_STORE}",
        f"$JS.API.STREAM.INFO.KV_{names.RESULTS_BUCKET}",
        f"$JS.API.STREAM.INFO.KV_{names.ASYNC_JOBS_BUCKET}",
        f"$JS.API.STREAM.INFO.KV_{names.BATCHES_BUCKET}",
        f"$JS.API.STREAM.INFO.KV_{names.FILE_META_BUCKET}",
        f"$JS.API.DIRECT.GET.KV_{names.FILE_META_BUCKET}",
        f"$JS.API.CONSUMER.INFO.{names.OUTCOMES_STREAM}.{names.COLLECTOR_CONSUMER}",
        f"$JS.API.STREAM.MSG.GET.{names.BATCH_STREAM}",
        "_INBOX.>",
        f"{names.JOBS_PREFIX}.>",
        f"{names.OUTCOME_PREFIX}.>",
        names.jobs_subject("anything"),
    ):
        assert f'"{subject}"' in refused, f"worker was not refused {subject}:\n{refused}"
    assert 'User "api"' not in refused
