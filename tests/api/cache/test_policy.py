"""The cache key and what a request may do with the cache (api/cache/policy.py)."""

from __future__ import annotations

import pytest

from llmq.api.cache.policy import NEVER, cache_key, choose, is_sampled

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_the_key_ignores_order_stream_user_and_metadata() -> None:
    reordered = {"temperature": 0, "messages": BODY["messages"], "model": "m"}
    extra = {**BODY, "stream": True, "stream_options": {"include_usage": True},
             "user": "u-1", "metadata": {"run": "7"}}  # fmt: skip
    assert cache_key("acme~1", "m", BODY) == cache_key("acme~1", "m", reordered)
    assert cache_key("acme~1", "m", BODY) == cache_key("acme~1", "m", extra)


def test_the_key_differs_by_tenant_scope_model_and_body() -> None:
    base = cache_key("acme~1", "m", BODY)
    assert base != cache_key("acme~2", "m", BODY)  # the same name, created again
    assert base != cache_key("other~1", "m", BODY)
    assert base != cache_key("acme~1", "m2", BODY)
    assert base != cache_key("acme~1", "m", {**BODY, "max_tokens": 5})
    assert len(base) == 64


def test_sampling() -> None:
    assert is_sampled("chat", {"messages": []})  # OpenAI's default temperature is 1
    assert not is_sampled("chat", {"temperature": 0})
    assert not is_sampled("chat", {"temperature": 0.9, "seed": 3})
    assert is_sampled("chat", {"temperature": 0, "n": 2})
    assert not is_sampled("embedding", {"input": "x"})


def test_cache_control_and_the_ttl_header() -> None:
    assert choose({}, 0, 100, False, False) is NEVER  # not opted in
    assert choose({}, 60, 100, False, True) is NEVER  # sampled
    assert choose({}, 60, 100, True, True).ttl == 60
    assert choose({}, 600, 100, False, False).ttl == 100  # capped
    assert choose({"cache-control": "no-cache"}, 60, 100, False, False).lookup is False
    stored = choose({"cache-control": "no-store, max-age=0"}, 60, 100, False, False)
    assert stored.lookup and stored.ttl == 0
    assert choose({"x-llmq-cache-ttl": "5"}, 60, 100, False, False).ttl == 5
    assert choose({"x-llmq-cache-ttl": "5000"}, 60, 100, False, False).ttl == 100
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ValueError):
            choose({"x-llmq-cache-ttl": bad}, 60, 100, False, False)
