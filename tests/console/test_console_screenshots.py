"""The screenshots of docs/console.md, taken from a running `llmq dev` (a subprocess on free
ports, its data in a temp dir) plus a second echo worker joined to it as an operator would:
tenants, keys and prices made through the admin API, requests, a batch and async jobs sent
with the official `openai` SDK, the past days' usage seeded so the charts have more than
today's bar. One PNG per page goes to the folder in LLMQ_CONSOLE_SCREENSHOTS; run only when
asked (it takes a minute):

    LLMQ_CONSOLE_SCREENSHOTS=docs/console .venv/bin/python -m pytest tests/console -k screenshots
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmq.api.tenancy import connect
from llmq.embedded import free_port
from llmq.schemas import names
from tests.console.browser import until

OUT = os.environ.get("LLMQ_CONSOLE_SCREENSHOTS", "")
ADMIN = "console-admin-token"
pytestmark = [
    pytest.mark.skipif(not OUT, reason="set LLMQ_CONSOLE_SCREENSHOTS=docs/console to take them"),
    pytest.mark.timeout(300),
]
MODELS = ("echo", "llama3")
PRICES = {
    "echo": {"input_per_1m": 0.15, "output_per_1m": 0.6, "cached_input_per_1m": 0.075},
    "llama3": {"input_per_1m": 0.05, "output_per_1m": 0.1},
}
TENANTS = {
    "acme": {"rpm": 600, "tpm": 200_000, "max_concurrent": 20, "spend_budget_usd": 500.0},
    "globex": {"rpm": 120, "daily_tokens": 2_000_000},
    "initech": {"rpm": 60, "monthly_tokens": 10_000_000},
}
START_TIMEOUT = 90.0
"""Seconds `llmq dev` may take to serve (a machine shared by several test runs is slow)."""


@dataclass(frozen=True)
class Dev:
    """A running `llmq dev`: where its api, NATS and Redis listen and its data dir."""

    url: str
    nats_url: str
    redis_url: str
    data: Path

    def redis_password(self) -> str:
        return (self.data / "redis.password").read_text().strip()


def _wait_for_line(log: Path, text: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in log.read_text(errors="replace"):
        assert all(p.poll() is None for p in procs), log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + log.read_text(errors="replace")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to the process group (what a terminal does); SIGKILL if it does not stop."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _spawn(argv: list[str], env: dict[str, str], out: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


@contextmanager
def llmq_dev(tmp: Path, models_file: Path) -> Iterator[Dev]:
    """`llmq dev` on free ports with the admin token and a model table, and one more echo
    worker (`gpu-a`, models echo and llama3) joined to its NATS with the token file it wrote."""
    port, nats_port, redis_port = free_port(), free_port(), free_port()
    data = tmp / "dev"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env |= {"LLMQ_ADMIN_TOKEN": ADMIN, "LLMQ_MODELS_FILE": str(models_file)}
    log = tmp / "dev.log"
    dev = Dev(
        f"http://127.0.0.1:{port}",
        f"nats://127.0.0.1:{nats_port}",
        f"redis://127.0.0.1:{redis_port}/0",
        data,
    )
    llmq = [sys.executable, "-m", "llmq.cli"]
    dev_argv = [
        *llmq, "dev", "--port", str(port), "--nats-port", str(nats_port),
        "--redis-port", str(redis_port), "--data-dir", str(data), "--capacity", "4",
    ]  # fmt: skip
    worker_argv = [
        *llmq, "worker", "--backend", "echo", "--model", ",".join(MODELS),
        "--capacity", "8", "--worker-id", "gpu-a",
    ]  # fmt: skip
    worker_env = env | {
        "LLMQ_NATS_URL": dev.nats_url,
        "LLMQ_NATS_TOKEN_FILE": str(data / "nats.token"),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log, "wb") as out:
            procs.append(_spawn(dev_argv, env, out))
        _wait_for_line(log, "llmq is running", procs)
        with open(tmp / "worker.log", "wb") as out:
            procs.append(_spawn(worker_argv, worker_env, out))
        yield dev
    finally:
        for proc in reversed(procs):
            _stop(proc)


async def _seed_history(dev: Dev) -> None:
    """Usage of the last days (the day's counters, as release.lua books them), so the charts
    have more than today's bar; today's is the real traffic of the test."""
    redis = connect(dev.redis_url, password=dev.redis_password())
    today = datetime.datetime.now(datetime.UTC).date()
    try:
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
    finally:
        await redis.aclose()


def _shot(driver: Any, folder: Path, name: str, ready: str) -> None:
    until(lambda: driver.find_element("css selector", ready), f"the {name} page")
    time.sleep(0.5)  # let the page settle (fonts, the first refresh) before measuring it
    height = driver.execute_script("return document.documentElement.scrollHeight")
    chrome = driver.get_window_size()["height"] - driver.execute_script("return innerHeight")
    driver.set_window_size(1280, max(720, min(int(height) + int(chrome), 1500)))
    time.sleep(0.2)
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1280, 900)


async def test_screenshots(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, started = Path(OUT), time.time()
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        '[aliases]\ngpt-4o-mini = "echo"\nfast = "llama3"\n\n'
        "[defaults.echo]\ntemperature = 0.2\nmax_tokens = 256\n"
    )
    with llmq_dev(tmp_path, models_file) as dev:
        tenant_key = await _traffic(dev)
        await asyncio.to_thread(_browse, browser, dev.url, folder, tenant_key)
    stale = await asyncio.to_thread(_not_written, folder, started)
    assert not stale, f"pages without a new screenshot: {stale}"


def _not_written(folder: Path, since: float) -> list[str]:
    return [p for p in PAGES if not (folder / f"{p}.png").stat().st_mtime >= since]


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    resp = await client.request(method, path, json=body)
    assert resp.status_code < 300, (path, resp.status_code, resp.text)
    return resp.json()


async def _traffic(dev: Dev) -> str:
    """Tenants, keys and prices through the admin API, requests through the openai SDK; the
    key of `globex` for the tenant's own page."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=dev.url, headers=headers, timeout=30) as admin:
        for model, price in PRICES.items():
            await _admin(admin, "PUT", f"/admin/prices/{model}", price)
        keys: dict[str, str] = {}
        for name, limits in TENANTS.items():
            await _admin(admin, "POST", "/admin/tenants", {"name": name, **limits})
            made = await _admin(
                admin, "POST", f"/admin/tenants/{name}/keys", {"label": "production"}
            )
            keys[name] = made["key"]
            await _admin(
                admin, "POST", f"/admin/tenants/{name}/keys", {"label": "staging", "rpm": 30}
            )
        sdk = openai.AsyncOpenAI(base_url=f"{dev.url}/v1", api_key=keys["acme"], max_retries=0)
        while not {m.id async for m in sdk.models.list()} >= set(MODELS):
            assert time.monotonic() < deadline, "the second worker did not join"
            await asyncio.sleep(0.2)
        await sdk.close()
        await _seed_history(dev)
        for name, key in keys.items():
            await _requests(dev.url, name, key)
        await _admin(admin, "POST", "/admin/tenants/initech/suspend")
        # refused requests, so the overview's chart has errors too
        refused = openai.AsyncOpenAI(
            base_url=f"{dev.url}/v1", api_key=keys["initech"], max_retries=0
        )
        for _ in range(2):
            with pytest.raises(openai.PermissionDeniedError):
                await refused.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "suspended"}]
                )
        await refused.close()
        today = datetime.datetime.now(datetime.UTC).date().isoformat()

        async def booked(tenant: str) -> bool:  # the released jobs' usage is in
            rows = (await _admin(admin, "GET", f"/admin/tenants/{tenant}/usage?days=1"))["data"]
            return any(r["day"] == today for r in rows)

        for tenant in TENANTS:
            while not await booked(tenant):
                assert time.monotonic() < deadline + 60, f"the usage of {tenant} was not booked"
                await asyncio.sleep(0.2)
    return keys["globex"]


async def _requests(url: str, name: str, key: str) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        for i in range(6 if name == "acme" else 3):
            stream = await sdk.chat.completions.create(
                model=("gpt-4o-mini", "fast")[i % 2],
                messages=[{"role": "user", "content": f"request {i} of {name} " * 8}],
                stream=True,
            )
            async for _ in stream:
                pass
        if name != "acme":
            return
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
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for i in range(2):
                job = await client.post(
                    "/v1/jobs",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": "echo", "messages": [{"role": "user", "content": f"{i}"}]},
                )
                assert job.status_code in (200, 201, 202), job.text
    finally:
        await sdk.close()


PAGES = ("login", "overview", "tenants", "models", "ledger", "workers", "batches", "usage",
         "keys", "tenant")  # fmt: skip


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
    until(lambda: driver.find_element(By.CSS_SELECTOR, "#chart-requests rect"), "the chart")
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
    driver.find_element(By.ID, "key-owner").send_keys("platform team")
    driver.find_element(By.ID, "key-expires-in").send_keys("30d")
    driver.find_element(By.ID, "key-models").send_keys("echo")
    for field, value in (("key-rpm", "60"), ("key-tpm", "50000")):
        driver.find_element(By.ID, field).clear()
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "key-create").click()
    until(lambda: driver.find_element(By.ID, "new-key-value").text, "the new key")
    _shot(driver, folder, "keys", "#new-key-value")
    driver.find_element(By.ID, "logout").click()
    until(lambda: driver.find_element(By.ID, "token").is_displayed(), "logged out")
    driver.find_element(By.ID, "token").send_keys(tenant_key)
    driver.find_element(By.ID, "login-submit").click()
    until(lambda: driver.find_element(By.CSS_SELECTOR, "#chart-tokens rect"), "tenant usage")
    _shot(driver, folder, "tenant", "#limits-table")
