"""The NATS users of compose/nats/auth.conf, on a real nats-server running that very file.

- `llmq provision` (user `provision`) makes every stream and bucket; the api and a worker
  started before it wait, naming what is missing, and then serve chat (plain and streamed),
  an async job, a batch, the Responses API and files as `api` and `worker` with
  LLMQ_NATS_PROVISION=false, and the operator commands run as `cli`: the server logs no
  permission violation at all.
- Each runtime user tries every JetStream API call and subject it must not use (REFUSED):
  nats-server refuses each one, and the streams are unchanged afterwards.
- As `api`, a cancelled batch's queued lines leave LLMQ_BATCH, a line whose workers all died
  becomes a `worker_lost` result and leaves it too, and a queued job can be looked up by
  sequence (after a reconnect), with no violation.

docs/security.md's table of the users says what this checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import openai
import pytest
from nats.js.errors import NotFoundError

from llmq.api.batch.eviction import Evictor
from llmq.api.tenancy import Tenant, TenantStore
from llmq.api.tenancy import connect as tenancy_connect
from llmq.dispatcher import streams
from llmq.dispatcher.connection import connect, disconnect
from llmq.embedded import EmbeddedNats
from llmq.provision import PROVISIONED, run_provision
from llmq.schemas import names
from llmq.schemas.settings import ConnectionSettings, Settings
from tests.compose.test_compose import COMPOSE, INBOXES, _users
from tests.stack import unique, wait_for

INBOX = INBOXES
"""Each user's own inbox prefix (LLMQ_NATS_INBOX_PREFIX), as compose and k8s set them
(tests/compose/test_compose.py and test_k8s_policy.py check they do)."""

JOB_STREAMS = (names.JOBS_STREAM, names.BATCH_STREAM)
STORED = (
    *(
        f"KV_{b}"
        for b in (
            names.RESULTS_BUCKET, names.ASYNC_JOBS_BUCKET, names.BATCHES_BUCKET,
            names.FILE_META_BUCKET, names.RESPONSES_BUCKET, names.CONVERSATIONS_BUCKET,
        )
    ),
    f"OBJ_{names.FILES_OBJECT_STORE}",
)  # fmt: skip
"""Streams holding tenants' data at rest."""

API = "$JS.API"
API_PURGES = (
    f"OBJ_{names.FILES_OBJECT_STORE}",
    *(f"KV_{b}" for b in (names.RESULTS_BUCKET, names.ASYNC_JOBS_BUCKET, names.BATCHES_BUCKET)),
)
"""What only the api may purge, one subject at a time: a deleted file's chunks, an evicted
finished job's or batch's records (api/batch/eviction.py)."""
API_QUEUED = (
    f"{API}.STREAM.MSG.GET.{names.BATCH_STREAM}",
    f"{API}.STREAM.MSG.DELETE.{names.BATCH_STREAM}",
    f"{API}.STREAM.MSG.GET.{names.JOBS_STREAM}",
)
"""What only the api may do to one queued job, by sequence: read a batch line (one whose
workers all died) and take it out of the queue (that one, or a cancelled or expired batch's);
see whether an open interactive job is still queued (after a reconnect)."""
NOBODY = (
    # streams and buckets: never created, changed, purged or deleted at run time
    *(f"{API}.STREAM.{verb}.{s}" for s in PROVISIONED for verb in ("UPDATE", "DELETE")),
    *(f"{API}.STREAM.PURGE.{s}" for s in PROVISIONED if s not in API_PURGES),
    f"{API}.STREAM.CREATE.SPY",
    f"{API}.STREAM.CREATE.KV_SPY",
    f"{API}.STREAM.MSG.DELETE.{names.JOBS_STREAM}",
    # consumers on the job streams other than a worker's own per-model ones
    *(f"{API}.CONSUMER.CREATE.{s}" for s in JOB_STREAMS),
    *(f"{API}.CONSUMER.CREATE.{s}.spy._INBOX.>" for s in JOB_STREAMS),
    *(f"{API}.CONSUMER.CREATE.{s}.spy.>" for s in JOB_STREAMS),
    *(f"{API}.CONSUMER.DURABLE.CREATE.{s}.spy" for s in JOB_STREAMS),
    *(f"{API}.CONSUMER.DELETE.{s}.jobs-echo" for s in JOB_STREAMS),
    f"{API}.CONSUMER.DELETE.{names.OUTCOMES_STREAM}.{names.COLLECTOR_CONSUMER}",
    f"{API}.CONSUMER.CREATE.{names.OUTCOMES_STREAM}.spy.>",
    f"{API}.CONSUMER.CREATE.{names.USAGE_STREAM}",
    f"{API}.ACCOUNT.PURGE.LLMQ",
    f"{API}.SERVER.REMOVE",
    f"{API}.META.LEADER.STEPDOWN",
)
NOT_THE_API = (
    # tenants' data at rest, and writing it
    *(f"{API}.STREAM.MSG.GET.{s}" for s in STORED),
    *(f"{API}.DIRECT.GET.{s}" for s in STORED),
    *(f"{API}.CONSUMER.CREATE.{s}" for s in STORED),
    f"$KV.{names.RESULTS_BUCKET}.job.spy",
    f"$KV.{names.BATCHES_BUCKET}._.spy",
    f"$O.{names.FILES_OBJECT_STORE}.M.spy",
    # the api's shared consumers
    f"{API}.CONSUMER.MSG.NEXT.{names.USAGE_STREAM}.{names.USAGE_CONSUMER}",
    f"{API}.CONSUMER.MSG.NEXT.{names.OUTCOMES_STREAM}.{names.COLLECTOR_CONSUMER}",
    f"{API}.CONSUMER.INFO.{names.OUTCOMES_STREAM}.{names.COLLECTOR_CONSUMER}",
    # publishing jobs past the api's authentication and quotas
    names.jobs_subject("echo"),
    names.batch_subject("echo"),
)
REFUSED: dict[str, tuple[str, ...]] = {
    "worker": (
        *NOBODY,
        *NOT_THE_API,
        *(f"{API}.DIRECT.GET.{s}" for s in JOB_STREAMS),
        *(f"{API}.STREAM.PURGE.{s}" for s in API_PURGES),
        *API_QUEUED,
    ),
    "cli": (
        *NOBODY,
        *NOT_THE_API,
        *(f"{API}.STREAM.PURGE.{s}" for s in API_PURGES),
        f"{API}.STREAM.MSG.DELETE.{names.BATCH_STREAM}",
        f"$KV.{names.WORKERS_BUCKET}.spy",
        f"$KV.{names.MODELS_BUCKET}.spy",
        f"{API}.CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.jobs-echo",
        f"{API}.CONSUMER.CREATE.{names.JOBS_STREAM}.jobs-echo.llmq.jobs.echo",
        "_INBOX.spy",
        f"{names.OUTCOME_PREFIX}._.echo.spy",
        f"{names.USAGE_PREFIX}._.echo",
        names.cancel_subject("spy"),
    ),
    "api": (
        *NOBODY,
        # the workers' registry and their consumers
        f"$KV.{names.WORKERS_BUCKET}.spy",
        f"$KV.{names.MODELS_BUCKET}.spy",
        f"{API}.CONSUMER.CREATE.{names.JOBS_STREAM}.jobs-echo.llmq.jobs.echo",
        f"{API}.CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.jobs-echo",
        f"{API}.CONSUMER.MSG.NEXT.{names.BATCH_STREAM}.batch-echo",
        f"{names.OUTCOME_PREFIX}._.echo.spy",
        # queued messages but a batch line's, by sequence
        *(f"{API}.DIRECT.GET.{s}" for s in JOB_STREAMS),
    ),
}
SUBSCRIBE_REFUSED: dict[str, tuple[str, ...]] = {
    "worker": (
        "_INBOX.>", "_INBOX_cli.>", "_INBOX_provision.>", ">",
        f"{names.JOBS_PREFIX}.>", f"{names.OUTCOME_PREFIX}.>", f"{names.USAGE_PREFIX}.>",
        "$KV.>", "$O.>", "$JS.EVENT.>",
    ),
    "cli": (
        "_INBOX.>", "_INBOX_worker.>", "_INBOX_provision.>", ">",
        f"{names.JOBS_PREFIX}.>", f"{names.OUTCOME_PREFIX}.>", f"{names.CANCEL_PREFIX}.>",
        "$KV.>", "$O.>",
    ),
    "api": ("_INBOX_worker.>", "_INBOX_cli.>", "_INBOX_provision.>", ">", "$KV.>"),
}  # fmt: skip

VIOLATION = re.compile(r'"LLMQ/user:(\w+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')
"""How nats-server logs a refusal to a user of the LLMQ account."""


def violations(server: EmbeddedNats) -> set[tuple[str, str, str]]:
    """(kind, user, subject) of every permission violation nats-server logged; any other
    line naming a violation fails the test (the pattern above would be out of date)."""
    found = set()
    for line in server.log_path.read_text().splitlines():
        if "Violation" in line:
            match = VIOLATION.search(line)
            assert match, f"unrecognised violation line: {line}"
            user, kind, subject = match.groups()
            found.add((kind, user, subject))
    return found


@pytest.fixture
def secured(tmp_path: Path) -> Any:
    """nats-server with compose/nats/auth.conf and freshly generated users, and the
    passwords by user."""
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(COMPOSE / "make-secrets.sh"), str(secrets)], check=True, timeout=30)
    data = tmp_path / "nats"
    data.mkdir()
    shutil.copy(COMPOSE / "nats" / "auth.conf", data / "auth.conf")
    shutil.copy(secrets / "nats-users.conf", data / "users.conf")
    server = EmbeddedNats(data, config='include "auth.conf"')
    passwords = {user.lower(): pw for user, pw in _users(secrets).items()}
    yield server, passwords
    server.stop()


def as_user(user: str, passwords: dict[str, str]) -> dict[str, Any]:
    prefix = INBOX[user]
    return {"nats_user": user, "nats_password": passwords[user], "nats_inbox_prefix": prefix}


async def provision(url: str, passwords: dict[str, str]) -> None:
    settings = Settings(nats_url=url, **as_user("provision", passwords))
    await asyncio.wait_for(run_provision(settings), 60)


async def test_runtime_users_wait_for_provision_then_serve_every_flow_without_a_violation(
    secured: Any, stack: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    server, passwords = secured
    stack.nats_url = server.url
    model = unique("perm")
    caplog.set_level(logging.WARNING, logger="llmq.dispatcher.streams")
    # Started before `llmq provision`: they wait, saying what is missing.
    starting_api = asyncio.create_task(
        stack.api(nats_provision=False, admin_token="perm-admin", **as_user("api", passwords))
    )
    starting_worker = asyncio.create_task(
        stack.worker(model=[model], nats_provision=False, **as_user("worker", passwords))
    )
    await wait_for(lambda: caplog.text.count(f"stream {names.JOBS_STREAM} does not exist") >= 2)
    assert "llmq provision" in caplog.text
    assert not starting_api.done() and not starting_worker.done()
    await provision(server.url, passwords)
    api, _ = await asyncio.wait_for(asyncio.gather(starting_api, starting_worker), 60)
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)

    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "least privilege"}]
    reply = await sdk.chat.completions.create(model=model, messages=messages, timeout=30)
    assert reply.choices[0].message.content == "least privilege"
    streamed = await sdk.chat.completions.create(
        model=model, messages=messages, stream=True, timeout=30
    )
    assert "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    response = await sdk.responses.create(model=model, input="stored", store=True, timeout=30)
    assert (await sdk.responses.retrieve(response.id)).output_text == response.output_text
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        body = {"model": model, "messages": [{"role": "user", "content": "later"}]}
        job = (await http.post("/v1/jobs", json=body)).json()
        await wait_for(
            lambda: _status(http, f"/v1/jobs/{job['id']}", "completed"), timeout=30, interval=0.2
        )
        assert (await http.get("/v1/jobs")).status_code == 200
        # an admin change of a tenant, announced to every api (llmq.auth.changed)
        admin = {"authorization": "Bearer perm-admin"}
        tenant = unique("perm-t")
        made = await http.post("/admin/tenants", json={"name": tenant}, headers=admin)
        assert made.status_code in (200, 201), made.text
        suspended = await http.post(f"/admin/tenants/{tenant}/suspend", headers=admin)
        assert suspended.status_code == 200, suspended.text
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
    assert batch.status == "completed" and batch.output_file_id, batch
    assert b"later" in (await sdk.files.content(batch.output_file_id)).content
    assert [f.id async for f in sdk.files.list()]
    assert (await sdk.files.delete(uploaded.id)).deleted
    # A full bucket evicts finished jobs and batches (here: every finished one).
    evictor = Evictor(api.runtime.js, water=1e-9)
    for bucket in (names.ASYNC_JOBS_BUCKET, names.BATCHES_BUCKET):
        await evictor.make_room(f"KV_{bucket}", within=10)
    assert evictor.evicted == {"jobs": 1, "batches": 1}
    with pytest.raises(openai.NotFoundError):
        await sdk.batches.retrieve(batch.id)
    await sdk.close()
    # The operators' commands, as `cli`.
    env = {
        **os.environ, "LLMQ_NATS_URL": server.url, "LLMQ_NATS_USER": "cli",
        "LLMQ_NATS_PASSWORD": passwords["cli"], "LLMQ_NATS_INBOX_PREFIX": INBOX["cli"],
    }  # fmt: skip
    redis = tenancy_connect(stack.redis_url)
    revoked = unique("perm")
    await TenantStore(redis).create(Tenant(name=revoked))
    _, record = await TenantStore(redis).create_key(revoked)
    await redis.aclose()
    env["LLMQ_REDIS_URL"] = stack.redis_url
    revoke = ["keys", "revoke", revoked, record.id]  # announced on llmq.auth.changed
    for command in (["status"], ["workers"], ["jobs"], ["top", "--iterations", "1"], revoke):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "llmq.cli", *command],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (command, done.stderr)
        assert "was not told" not in done.stderr, done.stderr
        if command != revoke:
            shown = done.stdout
    assert model in shown
    # Everything above needed no right any of these users lacks.
    assert violations(server) == set()


async def _status(http: httpx.AsyncClient, path: str, wanted: str) -> bool:
    status = (await http.get(path)).json()["status"]
    assert status in ("queued", "in_progress", wanted), status
    return bool(status == wanted)


async def _refused_requests(nc: Any, subjects: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Each subject as a request: what came back (an error or a timeout, if refused)."""
    body = msgspec.json.encode({"config": {"name": "spy", "subjects": ["_INBOX.>"]}})
    outcomes = await asyncio.gather(
        *(nc.request(subject, body, timeout=2.0) for subject in subjects), return_exceptions=True
    )
    return list(zip(subjects, outcomes, strict=True))


@pytest.mark.parametrize("user", sorted(REFUSED))
async def test_each_runtime_user_is_refused_what_it_must_not_do(
    secured: Any, stack: Any, user: str
) -> None:
    server, passwords = secured
    await provision(server.url, passwords)
    if user == "worker":  # the consumers a worker may make, there to be attacked
        stack.nats_url = server.url
        await stack.worker(model=["echo"], nats_provision=False, **as_user("worker", passwords))
    conn = ConnectionSettings(**as_user(user, passwords))
    nc = await connect(server.url, f"nosy {user}", 5.0, conn=conn)
    try:
        answered = await _refused_requests(nc, REFUSED[user])
        for subject in SUBSCRIBE_REFUSED[user]:
            await nc.subscribe(subject)
        await nc.flush()
    finally:
        await disconnect(nc)
    for subject, outcome in answered:
        assert isinstance(outcome, (nats.errors.Error, asyncio.TimeoutError)), (subject, outcome)
    seen = violations(server)
    missing = [s for s in REFUSED[user] if ("Publish", user, s) not in seen]
    missing += [s for s in SUBSCRIBE_REFUSED[user] if ("Subscription", user, s) not in seen]
    assert not missing, f"{user} was not refused: {missing}"
    # The job streams are as `llmq provision` made them: nobody widened or cut them.
    admin = ConnectionSettings(**as_user("provision", passwords))
    nc = await connect(server.url, "check", 5.0, conn=admin)
    try:
        js = nc.jetstream()
        jobs = await js.stream_info(names.JOBS_STREAM)
        assert jobs.config.subjects == [f"{names.JOBS_PREFIX}.>"]
        assert jobs.config.max_msgs in (None, -1)
        assert "SPY" not in [s.config.name for s in await js.streams_info()]
        assert "spy" not in [c.name for c in await js.consumers_info(names.JOBS_STREAM)]
    finally:
        await disconnect(nc)


def test_docs_say_what_each_user_may_and_may_not_do() -> None:
    """docs/security.md has a row for every user of auth.conf, naming what this file
    checks for it; and every user this file attacks is one of them."""
    users = re.findall(r"^\s+user: (\w+)$", (COMPOSE / "nats" / "auth.conf").read_text(), re.M)
    assert users == ["provision", "api", "worker", "cli"]
    docs = (COMPOSE.parent / "docs" / "security.md").read_text()
    for user in users:
        (row,) = [line for line in docs.splitlines() if line.startswith(f"| `{user}` ")]
        may, may_not = row.split(" | ")[1:3]
        assert may and may_not, user
    assert set(REFUSED) | {"provision"} == set(users)
    assert "tests/compose/test_nats_permissions.py" in docs


async def test_the_api_takes_lines_of_a_cancelled_batch_and_a_lost_line_out_of_the_queue(
    secured: Any, stack: Any
) -> None:
    """As `api`: a cancelled or expired batch's queued lines leave LLMQ_BATCH, and a line
    whose workers all died becomes a `worker_lost` result and leaves the queue too; the
    server refuses none of it (a refused request would wait out its timeout)."""
    server, passwords = secured
    await provision(server.url, passwords)
    stack.nats_url = server.url
    model = unique("perm-b")
    api = await stack.api(nats_provision=False, **as_user("api", passwords))
    # A worker lists the model and goes: the lines stay queued, nobody pulls them.
    worker = await stack.worker(
        model=[model], nats_provision=False, max_deliver=2, **as_user("worker", passwords)
    )
    await wait_for(lambda: api.runtime.registry.workers_for(model), timeout=20)
    await worker.close()
    stack.workers.remove(worker)
    nc = await connect(
        server.url, "check", 5.0, conn=ConnectionSettings(**as_user("provision", passwords))
    )
    js = nc.jetstream()

    async def queued() -> int:
        info = await js.stream_info(names.BATCH_STREAM, subjects_filter=names.batch_subject(model))
        return sum((info.state.subjects or {}).values())

    sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    try:
        lines = [
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"l{i}"}]}}
            for i in range(5)
        ]  # fmt: skip
        batch = await _batch(sdk, lines)
        await wait_for(lambda: _count_is(queued, 5), timeout=20, interval=0.1)
        await sdk.batches.cancel(batch.id)
        batch = await _final(sdk, batch.id)
        assert batch.status == "cancelled", batch
        assert await queued() == 0, "the cancelled batch's lines are still queued"
        # An expired one's too.
        batch = await _batch(sdk, lines, window="3s")
        await wait_for(lambda: _count_is(queued, 5), timeout=20, interval=0.1)
        batch = await _final(sdk, batch.id)
        assert batch.status == "expired", batch
        assert await queued() == 0, "the expired batch's lines are still queued"

        # A line taken by workers that all die (as `worker`: max_deliver 2, never acked).
        wc = await connect(
            server.url, "dying", 5.0, conn=ConnectionSettings(**as_user("worker", passwords))
        )
        try:
            wjs = wc.jetstream()
            consumer = await streams.ensure_consumer(wjs, names.BATCH_STREAM, model, 0.3, 2)
            batch = await _batch(sdk, lines[:1])
            sub = await wjs.pull_subscribe_bind(consumer, names.BATCH_STREAM)
            taken = 0
            deadline = time.monotonic() + 20
            while taken < 2:  # taken, then the worker "dies", twice
                assert time.monotonic() < deadline
                with contextlib.suppress(nats.errors.TimeoutError):
                    taken += len(await sub.fetch(1, timeout=1))
            with contextlib.suppress(nats.errors.TimeoutError):
                await sub.fetch(1, timeout=1)  # the server gives up and advises
            batch = await _final(sdk, batch.id)
            assert batch.status == "completed" and batch.error_file_id, batch
            lost = json.loads((await sdk.files.content(batch.error_file_id)).content)
            assert lost["response"]["status_code"] == 502, lost
            assert lost["response"]["body"]["error"]["code"] == "worker_lost", lost
            await wait_for(lambda: _count_is(queued, 0), timeout=10, interval=0.1)
            await sub.unsubscribe()
        finally:
            await disconnect(wc)
        # After a reconnect the api asks whether its open jobs are still queued
        # (Dispatcher.find_missing): an answer, not a refusal that times out.
        with pytest.raises(NotFoundError):
            await api.runtime.js.get_msg(names.JOBS_STREAM, 1)
    finally:
        await sdk.close()
        await disconnect(nc)
    assert violations(server) == set()


async def _count_is(count: Any, wanted: int) -> bool:
    return bool(await count() == wanted)


async def _batch(sdk: openai.AsyncOpenAI, lines: list[Any], window: Any = "24h") -> Any:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await sdk.files.create(file=("in.jsonl", data), purpose="batch")
    return await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window=window
    )


async def _final(sdk: openai.AsyncOpenAI, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    batch = await sdk.batches.retrieve(batch_id)
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch_id)
    return batch
