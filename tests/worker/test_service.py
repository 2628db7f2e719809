"""Each worker is the NATS micro service `llmq-worker`: its `$SRV.PING|INFO|STATS` replies
follow the io.nats.micro.v1 schemas, carry the worker's id, backend, models, capacity,
in-flight count and circuit state, and its STATS count jobs and errors and time a streamed
job until its stream ends."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import httpx
import nats

from llmq.dispatcher.probes import micro_gather
from llmq.schemas import names
from tests.stack import wait_for

# --- the io.nats.micro.v1 response schemas (JSON Schema draft 7, as nats-io/jsm.go
# publishes them under schemas/micro/v1/), with a validator for the keywords they use ------

_SEMVER = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_NAME = {"type": "string", "pattern": r"^[a-zA-Z0-9_-]+$", "minLength": 1}
_ID = {"type": "string", "minLength": 1}
_VERSION = {"type": "string", "pattern": _SEMVER, "minLength": 5}
_METADATA = {
    "oneOf": [
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "null"},
    ]
}
_INT64 = {"type": "integer", "maximum": 2**63 - 1, "minimum": -(2**63 - 1)}


def _common(kind: str) -> dict[str, Any]:
    return {
        "type": {"type": "string", "const": f"io.nats.micro.v1.{kind}_response"},
        "name": _NAME,
        "id": _ID,
        "version": _VERSION,
        "metadata": _METADATA,
    }


PING_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version"],
    "properties": _common("ping"),
}
INFO_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version", "description"],
    "properties": {
        **_common("info"),
        "description": {"type": "string"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "subject"],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "metadata": _METADATA,
                },
            },
        },
    },
}
STATS_SCHEMA = {
    "type": "object",
    "required": ["type", "name", "id", "version", "started", "endpoints"],
    "properties": {
        **_common("stats"),
        "started": {"type": "string", "format": "date-time"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "subject",
                    "num_requests",
                    "num_errors",
                    "last_error",
                    "processing_time",
                    "average_processing_time",
                ],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "num_requests": _INT64,
                    "num_errors": _INT64,
                    "last_error": {"type": "string"},
                    "processing_time": _INT64,
                    "average_processing_time": _INT64,
                    "data": {"type": "object"},
                },
            },
        },
    },
}

_TYPES: dict[str, Any] = {
    "string": str,
    "object": dict,
    "array": list,
    "null": type(None),
    "boolean": bool,
}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def violations(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Draft-7 subset: type, const, required, properties, additionalProperties, items,
    pattern, minLength, minimum, maximum, oneOf, format date-time."""
    errors: list[str] = []
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not violations(value, s, path)]
        if len(matching) != 1:
            errors.append(f"{path}: matches {len(matching)} of oneOf")
        return errors
    kind = schema.get("type")
    if kind is not None and not _type_ok(value, kind):
        return [f"{path}: {value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not _RFC3339.match(value):
            errors.append(f"{path}: {value!r} is not RFC 3339")
    if isinstance(value, int) and not isinstance(value, bool):
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum")
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                errors.extend(violations(item, props[key], f"{path}.{key}"))
            elif isinstance(schema.get("additionalProperties"), dict):
                errors.extend(violations(item, schema["additionalProperties"], f"{path}.{key}"))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors.extend(violations(item, schema["items"], f"{path}[{i}]"))
    return errors


def test_the_validator_catches_what_the_schemas_forbid() -> None:
    good = {"type": "io.nats.micro.v1.ping_response", "name": "a", "id": "x", "version": "1.0.0"}
    assert violations(good, PING_SCHEMA) == []
    assert violations({**good, "metadata": None}, PING_SCHEMA) == []
    assert violations({**good, "version": "1.0"}, PING_SCHEMA)
    assert violations({**good, "metadata": {"n": 1}}, PING_SCHEMA)
    assert violations({**good, "name": "a.b"}, PING_SCHEMA)
    info = {**good, "type": "io.nats.micro.v1.info_response"}
    assert violations({**info, "description": None}, INFO_SCHEMA)  # nats-py's default
    stats = {**good, "type": "io.nats.micro.v1.stats_response", "started": "x", "endpoints": []}
    assert violations(stats, STATS_SCHEMA)
    endpoint = {
        "name": "e", "subject": "s", "num_requests": 0, "num_errors": 0, "last_error": "",
        "processing_time": 0, "average_processing_time": 0, "data": None,
    }  # fmt: skip
    stats = {**stats, "started": "2026-01-02T03:04:05.678Z", "endpoints": [endpoint]}
    assert violations(stats, STATS_SCHEMA) == ["$.endpoints[0].data: None is not object"]


# --- the service ---------------------------------------------------------------------------


def _model() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}.v1"  # a dot: escaped in subjects


def _ours(replies: list[dict[str, Any]], worker_id: str) -> dict[str, Any]:
    found = [r for r in replies if (r.get("metadata") or {}).get("worker_id") == worker_id]
    assert len(found) == 1, replies
    return found[0]


async def test_ping_info_and_stats_follow_the_micro_schemas(stack) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    worker = await stack.worker(model=[model], capacity=3, worker_id=f"w-{uuid.uuid4().hex[:6]}")
    nc = await nats.connect(stack.nats_url)
    try:
        for verb, schema in (("PING", PING_SCHEMA), ("INFO", INFO_SCHEMA), ("STATS", STATS_SCHEMA)):
            # all services, all of this kind, this one instance: three subjects per verb
            for service in (None, names.MICRO_SERVICE):
                replies = await micro_gather(nc, verb, service, timeout=2.0)
                reply = _ours(replies, worker.id)
                assert violations(reply, schema) == [], (service, reply)
            direct = await nc.request(
                f"$SRV.{verb}.{names.MICRO_SERVICE}.{reply['id']}", b"", timeout=2
            )
            assert violations(json.loads(direct.data), schema) == []
        meta = reply["metadata"]
        assert meta["worker_id"] == worker.id
        assert meta["backend"] == "echo"
        assert meta["models"] == model
        assert meta["capacity"] == "3"
        assert meta["in_flight"] == "0"
        assert meta["circuit"] == "closed"
        assert meta["draining"] == "false"
        info = json.loads(
            (
                await nc.request(f"$SRV.INFO.{names.MICRO_SERVICE}.{reply['id']}", b"", timeout=2)
            ).data
        )
        assert info["name"] == "llmq-worker" and info["description"]
        subjects = {(e["name"], e["subject"], e["queue_group"]) for e in info["endpoints"]}
        escaped = names.escape_model(model)
        assert subjects == {
            ("jobs", f"llmq.jobs.{escaped}", f"jobs-{escaped}"),
            ("batch", f"llmq.batch.{escaped}", f"batch-{escaped}"),
        }
    finally:
        await nc.close()


async def test_stats_count_jobs_and_errors_and_time_streams_to_their_end(stack) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    api = await stack.api()
    worker = await stack.worker(model=[model], capacity=2, echo_delay=0.1)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    nc = await nats.connect(stack.nats_url)
    try:
        words = " ".join(f"w{i}" for i in range(6))  # 6 tokens x 0.1 s: the stream lasts ~0.6 s
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": words}]}
        async with httpx.AsyncClient(timeout=10) as client:
            task = asyncio.create_task(client.post(f"{api.url}/v1/chat/completions", json=body))
            await wait_for(lambda: worker.scheduler.in_flight == 1)
            replies = await micro_gather(nc, "STATS", names.MICRO_SERVICE, timeout=2.0)
            running = _ours(replies, worker.id)
            jobs_ep = next(e for e in running["endpoints"] if e["name"] == "jobs")
            assert jobs_ep["data"]["in_flight"] == 1
            assert len(jobs_ep["data"]["running"]) == 1
            assert running["metadata"]["in_flight"] == "1"
            started = time.monotonic()
            resp = await task
            assert resp.status_code == 200 and "[DONE]" in resp.text
        # a job the worker cannot run: a body that is not a chat request
        await nc.jetstream().publish(
            names.jobs_subject(model),
            b'{"model": 1}',
            headers={names.H_JOB: uuid.uuid4().hex, names.H_REPLY: "_INBOX.nobody.x"},
        )
        await wait_for(lambda: worker.outcomes.get("error") == 1)
        stats = _ours(await micro_gather(nc, "STATS", names.MICRO_SERVICE, 2.0), worker.id)
        assert violations(stats, STATS_SCHEMA) == []
        jobs_ep = next(e for e in stats["endpoints"] if e["name"] == "jobs")
        assert jobs_ep["num_requests"] == 2
        assert jobs_ep["num_errors"] == 1
        assert jobs_ep["last_error"].startswith("error")
        assert jobs_ep["data"] == {
            "model": model,
            "stream": "LLMQ_JOBS",
            "in_flight": 0,
            "running": [],
        }
        # the streamed job took ~0.6 s and is timed to its stream's end
        assert jobs_ep["processing_time"] >= 0.45e9, jobs_ep
        assert time.monotonic() - started < 5
        batch_ep = next(e for e in stats["endpoints"] if e["name"] == "batch")
        assert batch_ep["num_requests"] == 0
    finally:
        await nc.close()


async def test_the_service_leaves_with_the_worker(stack) -> None:  # type: ignore[no-untyped-def]
    worker = await stack.worker(model=[_model()])
    nc = await nats.connect(stack.nats_url)
    try:
        _ours(await micro_gather(nc, "PING", names.MICRO_SERVICE, 2.0), worker.id)
        await worker.close()
        replies = await micro_gather(nc, "PING", names.MICRO_SERVICE, 0.5)
        assert not [r for r in replies if r["metadata"].get("worker_id") == worker.id]
    finally:
        await nc.close()
