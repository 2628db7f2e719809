"""Hostile input, generated: hundreds of bodies and headers per endpoint (chat, completions,
embeddings, async jobs, file uploads, batches, the admin API) — invalid UTF-8, deep nesting,
huge numbers, wrong types, giant strings — against a real api, worker, nats-server and
Valkey. For every request: never a 5xx, an answer within a bound, an OpenAI-shaped error
for a refusal, and a refused request leaves the tenant's quota counters exactly as they
were. The api must still be healthy afterwards.

Hypothesis runs in a thread (the in-process api keeps the event loop); `derandomize=True`
makes every run generate the same inputs, so CI is stable.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmq.api.tenancy import Tenant, TenantStore, connect
from llmq.schemas import names
from tests.spec import assert_valid
from tests.stack import unique, wait_for

MODEL = "fuzz-echo"
REQUEST_BOUND = 20.0
"""Seconds any one request may take, streamed answer included."""

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies ----------------------------------------------------------------------------

HUGE = st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64, 10**17, 10**30, -(10**30)])
INTS = st.one_of(st.integers(-3, 10), st.integers(-(2**80), 2**80), HUGE)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
GIANT = st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "é", "字", "😀", "a "]), st.integers(2_000, 400_000)
)
TEXTS = st.one_of(st.text(max_size=30), GIANT)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, st.text(max_size=30))
ANY_JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=16,
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything at all."""
    return st.one_of(good, good, good, ANY_JSON)


MESSAGE = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
    optional={
        "content": mostly(
            st.one_of(
                TEXTS,
                st.lists(
                    st.fixed_dictionaries({"type": st.just("text"), "text": TEXTS}), max_size=3
                ),
            )
        ),
        "name": mostly(st.text(max_size=10)),
        "tool_call_id": ANY_JSON,
        "tool_calls": ANY_JSON,
    },
)
SAMPLING = {
    "max_tokens": mostly(st.one_of(st.integers(1, 64), INTS)),
    "n": mostly(st.one_of(st.integers(1, 3), INTS)),
    "temperature": mostly(st.one_of(st.floats(0, 2), FLOATS)),
    "top_p": mostly(st.floats(0, 1)),
    "seed": mostly(INTS),
    "stop": mostly(st.lists(st.text(min_size=1, max_size=5), max_size=2)),
    "user": mostly(st.text(max_size=10)),
    "stream": mostly(st.booleans()),
    "stream_options": mostly(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "logit_bias": mostly(st.just({})),
    "unknown_field": ANY_JSON,
}
CHAT = st.fixed_dictionaries(
    {"model": mostly(st.just(MODEL)), "messages": mostly(st.lists(MESSAGE, max_size=3))},
    optional={
        **SAMPLING,
        "max_completion_tokens": mostly(INTS),
        "tools": ANY_JSON,
        "tool_choice": ANY_JSON,
        "response_format": ANY_JSON,
        "metadata": ANY_JSON,
    },
)
COMPLETION = st.fixed_dictionaries(
    {
        "model": mostly(st.just(MODEL)),
        "prompt": mostly(st.one_of(TEXTS, st.lists(TEXTS, max_size=3))),
    },
    optional={**SAMPLING, "echo": ANY_JSON, "suffix": ANY_JSON, "logprobs": ANY_JSON},
)
EMBEDDING = st.fixed_dictionaries(
    {
        "model": mostly(st.just(MODEL)),
        "input": mostly(st.one_of(TEXTS, st.lists(TEXTS, max_size=3))),
    },
    optional={
        "encoding_format": mostly(st.sampled_from(["float", "base64"])),
        "dimensions": INTS,
        "user": ANY_JSON,
    },
)


def _encode(value: Any) -> bytes:
    # NaN and Infinity come out as bare words: not JSON, as a careless client would send.
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode()


def _deep(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def raw_bodies(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bytes no careful client sends: broken UTF-8 spliced into a body, deep nesting at the
    top or inside a field, junk."""
    spliced = st.builds(
        lambda body, at, junk: body[: at % (len(body) + 1)] + junk + body[at % (len(body) + 1) :],
        valid.map(_encode),
        st.integers(0, 10_000),
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b'"', b"\\u", b"\\ud800"]),
    )
    deep_top = st.integers(1, 200_000).map(_deep)
    deep_field = st.integers(100, 100_000).map(
        lambda d: (
            b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":'
            b'[{"type":"text","text":"x","x":'
            + _deep(d)
            + b'}]}],"tools":[{"x":'
            + _deep(d)
            + b'}],"input":'
            + _deep(d)
            + b',"prompt":"p","metadata":'
            + _deep(d)
            + b"}"
        )
    )
    in_string = PLAIN.map(_encode).flatmap(
        lambda body: st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88"]).map(
            lambda junk: (
                body.replace(b'"content": "', b'"content": "' + junk, 1)
                .replace(b'"prompt": "', b'"prompt": "' + junk, 1)
                .replace(b'"input": "', b'"input": "' + junk, 1)
            )
        )
    )
    return st.one_of(
        spliced, in_string, deep_top, deep_field, st.binary(max_size=200), st.just(b"")
    )


PLAIN = st.fixed_dictionaries(
    {
        "model": st.just(MODEL),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=40)}),
            min_size=1,
            max_size=2,
        ),
        "prompt": st.text(max_size=40),
        "input": st.text(max_size=40),
    },
    optional={
        "max_tokens": st.integers(1, 32),
        "n": st.integers(1, 3),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
"""A well-formed request for any of the three endpoints (each ignores the others' fields),
so that every run also goes all the way through the worker."""


FIELDS = [
    "model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens", "n",
    "temperature", "top_p", "seed", "stream", "stream_options", "stop", "tools",
    "tool_choice", "response_format", "logprobs", "top_logprobs", "logit_bias", "user",
    "metadata", "dimensions", "encoding_format", "best_of", "echo", "suffix",
]  # fmt: skip
BAD_VALUES = st.one_of(INTS, INTS, FLOATS, TEXTS, ANY_JSON)
ONE_BAD = st.builds(
    lambda body, field, value: {**body, field: value}, PLAIN, st.sampled_from(FIELDS), BAD_VALUES
)
"""A well-formed request with one field replaced: reaches the checks deepest in."""


def bodies(fuzzed: st.SearchStrategy[Any], plain: bool = True) -> st.SearchStrategy[bytes]:
    good = [PLAIN.map(_encode), ONE_BAD.map(_encode), ONE_BAD.map(_encode)] if plain else []
    return st.one_of(*good, fuzzed.map(_encode), raw_bodies(fuzzed))


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip  # what HTTP allows a header value to be
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        # Refused, or long enough: a deadline the client shortened may pass (a fair 504).
        "x-llmq-deadline": st.one_of(
            HEADER_TEXT.filter(_not_a_number),
            st.sampled_from(["0", "-1", "-0", "nan", "inf", "-inf", "1e308", "30", "0x10"]),
        ),
        "content-type": st.one_of(
            HEADER_TEXT, st.sampled_from(["application/json", "text/plain", ""])
        ),
        "traceparent": HEADER_TEXT,
        "x-request-id": HEADER_TEXT,
        "accept": HEADER_TEXT,
    },
)
AUTH = st.one_of(st.just("key"), st.just("key"), st.just("key"), st.sampled_from(["none", "junk"]))


# --- the target and the checks ---------------------------------------------------------------


@dataclass
class Target:
    url: str
    key: str
    admin: str
    tenant: str
    redis_url: str
    file_id: str = ""

    def __post_init__(self) -> None:
        self.redis = sync_redis.Redis.from_url(self.redis_url)
        self.http = httpx.Client(base_url=self.url, timeout=REQUEST_BOUND)
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.quota_keys: set[bytes] = set()
        """Every quota key `send` compared before and after a request."""

    def auth(self, choice: str) -> dict[str, str]:
        if choice == "key":
            return {"authorization": f"Bearer {self.key}"}
        if choice == "junk":
            return {"authorization": "Bearer sk-llmq-" + "0" * 40}
        return {}

    def settled_quota(self) -> dict[bytes, Any]:
        """The tenant's quota counters once no request of it holds a slot."""
        inflight = names.inflight_key(self.tenant)
        deadline = time.monotonic() + 15
        while self.redis.zcard(inflight) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.redis.zcard(inflight) == 0, "a slot was never released"
        # the same name as every quota key of the tenant: prefix, `q:`, the hash tag
        pattern = f"{names.REDIS_PREFIX}q:{names.tenant_tag(self.tenant)}:*"
        keys = [k for k in self.redis.scan_iter(match=pattern, count=100_000) if k != inflight]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        read = {b"hash": "hgetall", b"zset": "zrange", b"string": "get"}
        for key, kind in zip(keys, pipe.execute(), strict=True):
            how = read.get(kind)
            assert how is not None or kind == b"none", (key, kind)  # a kind not compared
            if how == "zrange":
                pipe.zrange(key, 0, -1, withscores=True)
            else:
                getattr(pipe, how or "get")(key)
        return dict(zip(keys, pipe.execute(), strict=True))

    def send(self, method: str, path: str, **kwargs: Any) -> bytes:
        """One request, read to its end within the bound; never a 5xx; a refusal in
        OpenAI's error shape that leaves the quota as it was."""
        before = self.settled_quota()
        self.quota_keys.update(before)
        started = time.monotonic()
        chunks: list[bytes] = []
        with self.http.stream(method, path, **kwargs) as resp:
            for chunk in resp.iter_bytes():
                chunks.append(chunk)
                assert time.monotonic() - started < REQUEST_BOUND, f"{method} {path} hangs"
        took = time.monotonic() - started
        assert took < REQUEST_BOUND, f"{method} {path} took {took:.1f} s"
        content = b"".join(chunks)
        self.requests += 1
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (method, path, resp.status_code, content[:500])
        if resp.status_code >= 400:
            assert_valid("ErrorResponse", json.loads(content))
            after = self.settled_quota()
            changed = {
                k: (before.get(k), after.get(k))
                for k in before.keys() | after.keys()
                if before.get(k) != after.get(k)
            }
            assert not changed, f"a refused request ({resp.status_code}) used quota: {changed}"
        return content

    def close(self) -> None:
        self.http.close()
        self.redis.close()


async def _target(stack: Any, redis_server: Any, **overrides: Any) -> Target:
    admin = "adm-" + uuid.uuid4().hex
    # Leases off: each admission is then a slot in Valkey's in-flight set until its job is
    # booked, so `settled_quota` can tell when the last accepted request is booked (a leased
    # job is booked a few ms after its answer, and would land inside the next refusal's
    # before/after window). The fuzz tests what a refusal leaves in Valkey, not leases.
    api = await stack.api(
        auth_mode="keys",
        key_cache_ttl=0,
        admin_token=admin,
        max_n=4,
        **{"quota_leases": False, **overrides},
    )
    await stack.worker(model=[MODEL], capacity=8)
    await wait_for(lambda: api.runtime.registry.workers_for(MODEL))
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("fuzz")
    await store.create(Tenant(name=tenant, rpm=1_000_000, tpm=0))
    key, _ = await store.create_key(tenant)
    await redis.aclose()
    return Target(api.url, key, admin, tenant, redis_server.url)


async def _run(target: Target, fuzz: Callable[[Target], None]) -> None:
    try:
        await asyncio.to_thread(fuzz, target)
        async with httpx.AsyncClient(timeout=5) as client:
            health = await client.get(f"{target.url}/health")
        assert health.status_code == 200, "the api did not stay up"
        assert target.requests >= 100, target.statuses
    finally:
        target.close()


# --- one test per endpoint -------------------------------------------------------------------


def _openai_fuzz(path: str, valid: st.SearchStrategy[Any]) -> Callable[[Target], None]:
    def fuzz(target: Target) -> None:
        @FUZZ
        @given(body=bodies(valid), headers=HEADERS, auth=AUTH)
        def one(body: bytes, headers: dict[str, str], auth: str) -> None:
            target.send("POST", path, content=body, headers={**headers, **target.auth(auth)})

        one()

    return fuzz


async def test_fuzz_chat_completions(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    target = await _target(stack, redis_server)
    await _run(target, _openai_fuzz("/v1/chat/completions", CHAT))
    assert target.statuses.get(200, 0) >= 10, target.statuses  # many went through the worker
    # the check that refusals used no quota compared real counters (the tenant's rate)
    assert names.rate_key(target.tenant).encode() in target.quota_keys


async def test_fuzz_completions(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    await _run(await _target(stack, redis_server), _openai_fuzz("/v1/completions", COMPLETION))


async def test_fuzz_embeddings(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    await _run(await _target(stack, redis_server), _openai_fuzz("/v1/embeddings", EMBEDDING))


JOB = st.one_of(CHAT, COMPLETION, EMBEDDING).flatmap(
    lambda body: st.fixed_dictionaries(
        {},
        optional={
            "endpoint": mostly(
                st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
            ),
            "webhook_url": mostly(st.sampled_from(["https://example.invalid/hook", "ftp://x"])),
            "metadata": ANY_JSON,
        },
    ).map(lambda extra: {**body, **extra})
)


async def test_fuzz_async_jobs(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    await _run(await _target(stack, redis_server), _openai_fuzz("/v1/jobs", JOB))


def _files_fuzz(target: Target) -> None:
    @FUZZ
    @given(
        purpose=mostly(st.sampled_from(["batch", "fine-tune", "assistants"])),
        content=st.one_of(
            st.binary(max_size=2_000),
            st.lists(CHAT, max_size=3).map(
                lambda rows: b"\n".join(
                    _encode(
                        {
                            "custom_id": str(i),
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": row,
                        }
                    )
                    for i, row in enumerate(rows)
                )
            ),
        ),
        filename=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
        raw=st.one_of(st.none(), raw_bodies(ANY_JSON)),
        headers=HEADERS,
        auth=AUTH,
    )
    def one(
        purpose: Any, content: bytes, filename: str, raw: bytes | None, headers: dict[str, str],
        auth: str,
    ) -> None:  # fmt: skip
        if raw is not None:  # not multipart at all
            target.send("POST", "/v1/files", content=raw, headers={**headers, **target.auth(auth)})
            return
        files = {"file": (filename, content, "application/jsonl")}
        data = {"purpose": purpose if isinstance(purpose, str) else json.dumps(purpose)}
        target.send("POST", "/v1/files", files=files, data=data, headers=target.auth(auth))

    one()


async def test_fuzz_file_uploads(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    target = await _target(stack, redis_server)
    await _run(target, _files_fuzz)
    assert names.rate_key(target.tenant).encode() in target.quota_keys  # accepted ones counted


def _batches_fuzz(target: Target) -> None:
    batch = st.fixed_dictionaries(
        {},
        optional={
            "input_file_id": mostly(st.sampled_from([target.file_id, "file-nope"])),
            "endpoint": mostly(st.sampled_from(["/v1/chat/completions", "/v1/embeddings"])),
            "completion_window": mostly(st.sampled_from(["24h", "1h", ""])),
            "metadata": ANY_JSON,
        },
    )

    @FUZZ
    @given(body=bodies(batch, plain=False), headers=HEADERS, auth=AUTH, batch_id=HEADER_TEXT)
    def one(body: bytes, headers: dict[str, str], auth: str, batch_id: str) -> None:
        target.send("POST", "/v1/batches", content=body, headers={**headers, **target.auth(auth)})
        target.send("GET", f"/v1/batches/{quote(batch_id, safe='')}", headers=target.auth(auth))

    one()


async def test_fuzz_batches(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    target = await _target(stack, redis_server)
    # A real input file whose lines name a model nobody serves: a batch may be created, and
    # its lines end unrun without ever reserving quota, so every counter stays comparable.
    request = {"model": "fuzz-nobody", "messages": [{"role": "user", "content": "x"}]}
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": request}
    async with httpx.AsyncClient(base_url=target.url, timeout=10) as client:
        upload = await client.post(
            "/v1/files",
            files={"file": ("in.jsonl", _encode(line), "application/jsonl")},
            data={"purpose": "batch"},
            headers=target.auth("key"),
        )
    assert upload.status_code == 200, upload.text
    target.file_id = upload.json()["id"]
    await _run(target, _batches_fuzz)


def _admin_fuzz(target: Target) -> None:
    name = st.one_of(st.text(max_size=20), st.sampled_from(["", ".", "..", "a/b", "%00"]))

    @FUZZ
    @given(
        route=st.sampled_from(["create", "patch", "price", "key", "usage"]),
        body=bodies(
            plain=False,
            fuzzed=ANY_JSON
            | st.fixed_dictionaries(
                {},
                optional={
                    "name": ANY_JSON,
                    "rpm": INTS,
                    "tpm": INTS,
                    "models": ANY_JSON,
                    "max_concurrent": INTS,
                    "daily_tokens": INTS,
                    "spend_budget_usd": FLOATS,
                    "input_per_mtok": FLOATS,
                    "output_per_mtok": FLOATS,
                    "expires_at": ANY_JSON,
                },
            ),
        ),
        tenant=name,
        query=st.dictionaries(HEADER_TEXT, HEADER_TEXT, max_size=3),
        headers=HEADERS,
        token=st.sampled_from(["admin", "admin", "admin", "wrong", "none"]),
    )
    def one(
        route: str, body: bytes, tenant: str, query: dict[str, str], headers: dict[str, str],
        token: str,
    ) -> None:  # fmt: skip
        bearer = {"admin": target.admin, "wrong": "nope"}.get(token)
        auth = {"authorization": f"Bearer {bearer}"} if bearer else {}
        tenant_path = quote("fz-" + tenant, safe="")
        path = {
            "create": "/admin/tenants",
            "patch": f"/admin/tenants/{tenant_path}",
            "price": f"/admin/prices/{tenant_path}",
            "key": f"/admin/tenants/{tenant_path}/keys",
            "usage": f"/admin/tenants/{tenant_path}/usage",
        }[route]
        method = {"create": "POST", "patch": "PATCH", "price": "PUT", "key": "POST"}.get(
            route, "GET"
        )
        target.send(method, path, content=body, params=query, headers={**headers, **auth})

    one()


async def test_fuzz_admin(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    await _run(await _target(stack, redis_server), _admin_fuzz)
