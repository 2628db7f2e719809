"""Schema-driven fuzzing (issue 27, finding 7): every operation of `/openapi.json` and of
`/admin/openapi.json`, with path and query parameters and request bodies generated from
the documents' own schemas (`schema_strategies.py`; the bodies are in the documents, see
`api/openapi_bodies.py`), against a real api, worker, nats-server and Valkey. For every
request: never a 5xx, never longer than 10 s (a stream read to its end). A fixed seed
(`derandomize`) and a bounded budget (`EXAMPLES` per operation) keep the run the same and
under a minute; the api stays healthy afterwards.

The hand-written `test_fuzz.py` goes deeper on the inference bodies (quota untouched by a
refusal, OpenAI's error shape); this one reaches every route the documents describe.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmq.api.tenancy import Tenant, TenantStore, connect
from tests.e2e.schema_strategies import from_schema
from tests.stack import unique, wait_for

MODEL = "schema-fuzz-echo"
ADMIN = "adm-schema-fuzz"
BOUND = 10.0
"""Seconds any one response may take, a stream read to its end included."""
EXAMPLES = 40
"""Requests per operation."""
SENDERS = 4
"""Clients sending at once."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
ID_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=24
)
"""A path parameter: anything that stays one path segment."""
PARAM = re.compile(r"{([^}]+)}")


@dataclass
class Run:
    url: str
    headers: dict[str, str]
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> None:
        started = time.monotonic()
        try:
            with client.stream(method, path, headers=self.headers, **kwargs) as resp:
                for _ in resp.iter_bytes():
                    if time.monotonic() - started > BOUND:
                        break
                status = resp.status_code
        except httpx.TimeoutException:
            status = 0
        took = time.monotonic() - started
        with self.lock:  # several senders share one run
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status >= 500 or status == 0 or took > BOUND:
                failure = f"{method} {path} -> {status} in {took:.1f} s {kwargs!r:.300}"
                self.failures.append(failure)


def _schema(schema: dict[str, Any], document: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for `schema`, its `$ref`s resolved in the document's components."""
    return from_schema(schema, document.get("components", {}).get("schemas", {}))


def _body(operation: dict[str, Any], document: dict[str, Any]) -> st.SearchStrategy[Any]:
    """kwargs for httpx: `json=` from the body's schema, `files=`/`data=` for a form."""
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        generated = _schema(content["application/json"]["schema"], document)
        # often the served model, so that bodies get past the model check to the worker
        aimed = st.tuples(generated, st.booleans()).map(
            lambda pair: (
                {**pair[0], "model": MODEL}
                if pair[1] and isinstance(pair[0], dict) and "model" in pair[0]
                else pair[0]
            )
        )
        return aimed.map(lambda body: {"json": body})
    if "multipart/form-data" in content:
        props = content["multipart/form-data"]["schema"]["properties"]
        texts = {
            name: _schema(schema, document).map(str)
            for name, schema in props.items()
            if schema.get("format") != "binary"
        }
        return st.fixed_dictionaries(
            {"files": st.binary(max_size=2_000).map(lambda data: {"file": ("f.jsonl", data)})},
            optional={"data": st.fixed_dictionaries({}, optional=texts)},
        )
    return st.just({})


def _params(operation: dict[str, Any], document: dict[str, Any]) -> st.SearchStrategy[Any]:
    query = {
        p["name"]: _schema(p.get("schema", {}), document)
        for p in operation.get("parameters", [])
        if p.get("in") == "query"
    }
    return st.fixed_dictionaries({}, optional=query)


Request = tuple[str, str, dict[str, Any]]
"""method, path, httpx kwargs"""


def fuzz_document(run: Run, document: dict[str, Any]) -> int:
    """Every operation of `document`, `EXAMPLES` requests each, sent `SENDERS` at a time
    (the requests are independent: `Run.send` records, never raises); how many operations."""
    requests: list[Request] = []
    operations = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            requests += generate(document, path, method, operation)
            operations += 1

    def sender(share: list[Request]) -> None:
        with httpx.Client(base_url=run.url, timeout=BOUND) as client:
            for method, path, kwargs in share:
                run.send(client, method, path, **kwargs)

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(sender, [requests[i::SENDERS] for i in range(SENDERS)]))
    return operations


def generate(
    document: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> list[Request]:
    """`EXAMPLES` requests for one operation, drawn from its schemas by Hypothesis."""
    names = PARAM.findall(path)
    drawn: list[Request] = []

    @FUZZ
    @given(
        ids=st.fixed_dictionaries({n: ID_TEXT for n in names}),
        params=_params(operation, document),
        body=_body(operation, document),
    )
    def one(ids: dict[str, str], params: dict[str, Any], body: dict[str, Any]) -> None:
        concrete = PARAM.sub(lambda m: quote(ids[m.group(1)], safe=""), path)
        drawn.append((method.upper(), concrete, {"params": params, **body}))

    one()
    return drawn


async def test_every_operation_of_both_documents(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    api = await stack.api(auth_mode="keys", admin_token=ADMIN, key_cache_ttl=0)
    await stack.worker(model=[MODEL], capacity=8)
    await wait_for(lambda: api.runtime.registry.workers_for(MODEL))
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("sfuzz")
    await store.create(Tenant(name=tenant, rpm=1_000_000))
    key, _ = await store.create_key(tenant)
    await redis.aclose()
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        public = (await client.get("/openapi.json")).json()
        admin_doc = (await client.get("/admin/openapi.json", headers=admin)).json()
    with_bodies = [
        (path, m) for path, ms in public["paths"].items() for m, op in ms.items()
        if "requestBody" in op
    ]  # fmt: skip
    assert len(with_bodies) >= 10, with_bodies  # the documents describe the bodies
    user = Run(api.url, {"authorization": f"Bearer {key}"})
    operator = Run(api.url, admin)
    started = time.monotonic()
    counted = await asyncio.to_thread(fuzz_document, user, public)
    counted += await asyncio.to_thread(fuzz_document, operator, admin_doc)
    took = time.monotonic() - started
    sent = sum(user.statuses.values()) + sum(operator.statuses.values())
    print(f"{counted} operations, {sent} requests in {took:.0f} s; "
          f"statuses {user.statuses} / admin {operator.statuses}")  # fmt: skip
    assert not user.failures + operator.failures, json.dumps(user.failures + operator.failures)
    assert sum(user.statuses.get(s, 0) for s in (200, 201, 202)) >= 10, user.statuses
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as client:
        assert (await client.get("/health")).status_code == 200
