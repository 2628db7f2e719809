"""The screenshots of docs/console.md, taken from a running stack (nats-server, Valkey, an
api and echo workers, as `llmq dev` runs them) with seeded tenants, keys, prices, a model
table, requests and a batch. Run only when asked:

    LLMQ_CONSOLE_SCREENSHOTS=docs/console .venv/bin/python -m pytest tests/console -k screenshots
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import Price, Tenant, TenantStore, connect
from llmq.embedded import EmbeddedRedis
from llmq.schemas import names
from tests.console.browser import until
from tests.stack import wait_for

OUT = os.environ.get("LLMQ_CONSOLE_SCREENSHOTS", "")
ADMIN = "console-admin-token"
pytestmark = [
    pytest.mark.skipif(not OUT, reason="set LLMQ_CONSOLE_SCREENSHOTS=docs/console to take them"),
    pytest.mark.timeout(300),
]
MODELS = ("echo", "llama3")
TENANTS = {
    "acme": {"rpm": 600, "tpm": 200_000, "max_concurrent": 20, "spend_budget_usd": 500.0},
    "globex": {"rpm": 120, "daily_tokens": 2_000_000},
    "initech": {"rpm": 60, "monthly_tokens": 10_000_000, "status": "suspended"},
}


async def _seed_history(redis: Any) -> None:
    """Usage of the last days (the day's counters, as release.lua books them), so the charts
    have more than today's bar."""
    today = datetime.datetime.now(datetime.UTC).date()
    for back in range(1, 10):
        day = (today - datetime.timedelta(days=back)).isoformat()
        for i, tenant in enumerate(TENANTS):
            for j, model in enumerate(MODELS):
                scale = (10 - back) * (3 - i) * (j + 1)
                key = names.usage_key(tenant, day)
                await redis.hincrby(key, f"req:{model}", 40 * scale)
                await redis.hincrby(key, f"in:{model}", 9_000 * scale)
                await redis.hincrby(key, f"out:{model}", 4_000 * scale)
                await redis.hincrbyfloat(key, f"usd:{model}", 0.012 * scale * (j + 1))


def _shot(driver: Any, folder: Path, name: str, ready: str) -> None:
    until(lambda: driver.find_element("css selector", ready), f"the {name} page")
    time.sleep(0.5)  # let the page settle (fonts, the first refresh) before measuring it
    height = driver.execute_script("return document.documentElement.scrollHeight")
    chrome = driver.get_window_size()["height"] - driver.execute_script("return innerHeight")
    driver.set_window_size(1280, max(720, min(int(height) + int(chrome), 1500)))
    time.sleep(0.2)
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1280, 900)


async def test_screenshots(stack, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = Path(OUT)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    redis_server = EmbeddedRedis(tmp_path / "redis")
    stack.redis_url = redis_server.url
    try:
        await _run(stack, browser, folder, tmp_path)
    finally:
        redis_server.stop()


async def _run(stack: Any, browser: Any, folder: Path, tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        '[aliases]\ngpt-4o-mini = "echo"\nfast = "llama3"\n\n'
        "[defaults.echo]\ntemperature = 0.2\nmax_tokens = 256\n"
    )
    await stack.worker(model=list(MODELS), capacity=8, worker_id=f"gpu-a-{uuid.uuid4().hex[:4]}")
    await stack.worker(model=["echo"], capacity=4, worker_id=f"gpu-b-{uuid.uuid4().hex[:4]}")
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN, models_file=str(models_file)
    )
    await wait_for(lambda: all(api.runtime.registry.workers_for(m) for m in MODELS))
    redis = connect(stack.redis_url)
    store = TenantStore(redis)
    await store.set_price("echo", Price(input_per_1m=0.15, output_per_1m=0.6))
    await store.set_price("llama3", Price(input_per_1m=0.05, output_per_1m=0.1))
    keys: dict[str, str] = {}
    for name, limits in TENANTS.items():
        await store.create(Tenant(name=name, **{**limits, "status": "active"}))  # type: ignore[arg-type]
        keys[name], _ = await store.create_key(name, "production")
        await store.create_key(name, "staging")
    await _seed_history(redis)
    for name, key in keys.items():
        sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
        for i in range(6 if name == "acme" else 3):
            stream = await sdk.chat.completions.create(
                model=MODELS[i % 2],
                messages=[{"role": "user", "content": f"request {i} of {name} " * 8}],
                stream=True,
            )
            async for _ in stream:
                pass
        if name == "acme":
            line = {
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "echo", "messages": [{"role": "user", "content": "x"}]},
            }
            lines = "".join(json.dumps({"custom_id": f"r{i}", **line}) + "\n" for i in range(5))
            upload = await sdk.files.create(
                file=("batch.jsonl", io.BytesIO(lines.encode())), purpose="batch"
            )
            await sdk.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            async with httpx.AsyncClient(base_url=api.url) as client:
                for i in range(2):
                    job = await client.post(
                        "/v1/jobs",
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "echo", "messages": [{"role": "user", "content": f"{i}"}]},
                    )
                    assert job.status_code in (200, 201, 202), job.text
        await sdk.close()
    await store.suspend("initech")
    tenant_key = keys["globex"]
    await redis.aclose()
    await asyncio.to_thread(_browse, browser, api.url, folder, tenant_key)


def _browse(driver: Any, url: str, folder: Path, tenant_key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.set_window_size(1280, 900)
    driver.get(f"{url}/ui")
    until(lambda: driver.find_element(By.ID, "token").is_displayed(), "login")
    _shot(driver, folder, "login", "#login-form")
    driver.find_element(By.ID, "token").send_keys(ADMIN)
    driver.find_element(By.ID, "login-submit").click()
    until(lambda: driver.find_element(By.ID, "nav-overview"), "navigation")
    until(lambda: driver.find_element(By.ID, "ov-workers").text not in ("…", ""), "figures")
    _shot(driver, folder, "overview", "#ov-rps")
    for page, ready in (
        ("tenants", "#tenants-table"), ("models", "#prices-table"), ("ledger", "#ledger-table"),
        ("workers", "#queues-table"), ("batches", "table[id^=batches-]"),
    ):  # fmt: skip
        driver.find_element(By.ID, f"nav-{page}").click()
        _shot(driver, folder, page, ready)
    driver.find_element(By.ID, "nav-usage").click()
    until(lambda: driver.find_element(By.CSS_SELECTOR, "#chart-tokens rect"), "usage bars")
    _shot(driver, folder, "usage", "#usage-table")
    driver.get(f"{url}/ui#keys?tenant=acme")
    until(lambda: driver.find_element(By.CSS_SELECTOR, "#keys-table tbody tr"), "keys")
    driver.find_element(By.ID, "key-label").send_keys("ci")
    driver.find_element(By.ID, "key-create").click()
    until(lambda: driver.find_element(By.ID, "new-key-value").text, "the new key")
    _shot(driver, folder, "keys", "#new-key-value")
    driver.find_element(By.ID, "logout").click()
    until(lambda: driver.find_element(By.ID, "token").is_displayed(), "logged out")
    driver.find_element(By.ID, "token").send_keys(tenant_key)
    driver.find_element(By.ID, "login-submit").click()
    until(lambda: driver.find_element(By.CSS_SELECTOR, "#chart-tokens rect"), "tenant usage")
    _shot(driver, folder, "tenant", "#limits-table")
