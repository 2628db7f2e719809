"""The console in a real browser (headless Chromium): an operator logs in, creates a tenant
and a key, the key serves a request (official `openai` SDK), the request shows in the usage
chart, the key is revoked and the next request is refused. A screenshot is written when a
step fails. Skips, naming the install command, when no browser is installed."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console.browser import screenshot_on_failure, until
from tests.stack import wait_for

ADMIN = "console-admin-token"
pytestmark = pytest.mark.timeout(240)


def _css(driver: Any, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def _log_in(driver: Any, url: str, token: str) -> None:
    driver.get(f"{url}/ui")
    field = until(lambda: _css(driver, "#token").is_displayed() and _css(driver, "#token"), "login")
    field.send_keys(token)
    _css(driver, "#login-submit").click()


def _flow(driver: Any, url: str, model: str, tenant: str) -> None:
    _log_in(driver, url, ADMIN)
    until(lambda: _css(driver, "#nav-tenants"), "the admin navigation")
    assert ADMIN not in driver.current_url

    # a tenant
    _css(driver, "#nav-tenants").click()
    until(lambda: _css(driver, "#tenant-name"), "the tenant form")
    _css(driver, "#tenant-name").send_keys(tenant)
    rpm = _css(driver, "#tenant-rpm")
    rpm.clear()
    rpm.send_keys("600")
    _css(driver, "#tenant-save").click()
    row = until(lambda: _css(driver, f'#tenants-table tr[data-id="{tenant}"]'), "the new tenant")
    assert "600" in row.text and "active" in row.text

    # a key, shown once
    row.find_element(By.LINK_TEXT, "keys").click()
    until(lambda: Select(_css(driver, "#key-tenant")).first_selected_option.text == tenant, "keys")
    _css(driver, "#key-label").send_keys("browser test")
    _css(driver, "#key-owner").send_keys("team-a")
    _css(driver, "#key-expires-in").send_keys("30d")
    own_rpm = _css(driver, "#key-rpm")
    own_rpm.clear()
    own_rpm.send_keys("60")
    _css(driver, "#key-create").click()
    key = until(lambda: _css(driver, "#new-key-value").text.strip(), "the new key")
    assert key.startswith("sk-llmq-")
    key_row = _css(driver, "#keys-table tbody tr")
    key_id = key_row.get_attribute("data-id")
    assert "team-a" in key_row.text and "60 rpm" in key_row.text, key_row.text
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    assert expires.strftime("%Y-%m-%d") in key_row.text, "expires in 30 days"
    assert _css(driver, "#keys-table td.col-last-used").text == "—", "never used yet"

    # the key serves a request
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    sent_at = time.time()
    reply = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from the browser test"}]
    )
    assert reply.choices[0].message.content == "hello from the browser test"
    tokens = reply.usage.total_tokens if reply.usage else 0
    assert tokens > 0

    # ... and shows in the usage chart (the ledger is written just after the reply)
    _css(driver, "#nav-usage").click()
    until(lambda: _css(driver, "#usage-tenant"), "the usage page")
    Select(_css(driver, "#usage-tenant")).select_by_value(tenant)
    Select(_css(driver, "#usage-by")).select_by_value("model")

    def bar() -> Any:
        _css(driver, "#usage-refresh").click()
        return until(
            lambda: _css(driver, f'#chart-tokens rect[data-series="{model}"]'), "bar", timeout=2
        )

    rect = until(bar, "the request in the usage chart")
    assert int(float(rect.get_attribute("data-value"))) == tokens
    assert tenant in _css(driver, "#usage-table").text

    # the keys page shows when the key was last used (stamped when the job's usage is booked)
    _css(driver, "#nav-keys").click()
    Select(until(lambda: _css(driver, "#key-tenant"), "keys page")).select_by_value(tenant)

    def last_used() -> str:
        driver.refresh()
        text: str = until(lambda: _css(driver, "#keys-table td.col-last-used").text, "the row")
        return "" if text == "—" else text

    shown = until(last_used, "the key's last use on the keys page")
    used_at = datetime.datetime.strptime(shown, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC)
    assert abs(used_at.timestamp() - sent_at) < 120, (shown, sent_at)

    # the ledger finds the request by its key
    driver.get(f"{url}/ui#ledger?q={key_id}")
    entry = until(lambda: _css(driver, "#ledger-table tbody tr"), "the request in the ledger")
    assert tenant in entry.text and model in entry.text and key_id in entry.text
    driver.get(f"{url}/ui#keys?tenant={tenant}")

    # revoke the key: the next request is refused
    revoke = until(lambda: _css(driver, "#keys-table button[data-key-id]"), "the key's row")
    revoke.click()
    driver.switch_to.alert.accept()
    until(lambda: not driver.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr"), "revoked")
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "again"}])
    assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    sdk.close()


async def test_console_tenant_key_usage_revoke(stack, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = f"m-{uuid.uuid4().hex[:8]}"
    tenant = f"browser-{uuid.uuid4().hex[:6]}"
    await stack.worker(model=[model])
    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN)
    await wait_for(lambda: api.runtime.registry.workers_for(model))
    browser.delete_all_cookies()
    try:
        await asyncio.to_thread(_flow, browser, api.url, model, tenant)
    except BaseException:
        folder = Path(os.environ.get("LLMQ_SCREENSHOT_DIR", tmp_path))
        shot = await asyncio.to_thread(screenshot_on_failure, browser, folder, "console-flow")
        print(f"screenshot of the failure: {shot}")
        raise


async def test_console_tenant_sees_only_its_own_page(stack, browser, redis_server) -> None:  # type: ignore[no-untyped-def]
    from llmq.api.tenancy import Tenant, TenantStore, connect

    api = await stack.api(auth_mode="keys", key_cache_ttl=0, admin_token=ADMIN)
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = f"own-{uuid.uuid4().hex[:6]}"
    await store.create(Tenant(name=tenant, rpm=42, daily_tokens=1000))
    key, _ = await store.create_key(tenant)
    await redis.aclose()
    browser.delete_all_cookies()

    def flow() -> None:
        _log_in(browser, api.url, key)
        until(lambda: _css(browser, "#limits-table"), "the tenant page")
        nav = [a.get_attribute("id") for a in browser.find_elements(By.CSS_SELECTOR, "#nav a")]
        assert nav == ["nav-mine"]
        limits = _css(browser, "#limits-table").text
        assert "42" in limits and "1,000" in limits
        assert tenant in _css(browser, "#page h2").text
        # the admin pages are not for a tenant session, even typed into the address bar
        browser.get(f"{api.url}/admin/tenants")
        assert "invalid_admin_token" in browser.page_source

    await asyncio.to_thread(flow)


async def test_console_edits_suspends_and_deletes_with_confirmation(
    stack, browser, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    models_file = tmp_path / "models.toml"
    models_file.write_text("[aliases]\n")
    api = await stack.api(auth_mode="keys", admin_token=ADMIN, models_file=str(models_file))
    tenant = f"edit-{uuid.uuid4().hex[:6]}"
    price_model = f"priced-{uuid.uuid4().hex[:6]}"
    browser.delete_all_cookies()

    def row() -> Any:
        return _css(browser, f'#tenants-table tr[data-id="{tenant}"]')

    def button(text: str) -> Any:
        return row().find_element(By.XPATH, f".//button[text()='{text}']")

    def flow() -> None:
        _log_in(browser, api.url, ADMIN)
        until(lambda: _css(browser, "#nav-tenants"), "navigation").click()
        until(lambda: _css(browser, "#tenant-name"), "the form").send_keys(tenant)
        _css(browser, "#tenant-save").click()
        until(row, "the tenant")
        button("Edit").click()
        rpm = _css(browser, "#tenant-rpm")
        rpm.clear()
        rpm.send_keys("700")
        _css(browser, "#tenant-save").click()
        until(lambda: "700" in row().text, "the new limit")
        button("Suspend").click()
        until(lambda: "suspended" in row().text, "suspended")
        button("Delete").click()
        browser.switch_to.alert.dismiss()
        assert "suspended" in until(row, "still there after a dismissed confirmation").text
        button("Delete").click()
        browser.switch_to.alert.accept()
        until(lambda: not browser.find_elements(By.CSS_SELECTOR, f'tr[data-id="{tenant}"]'), "gone")
        # the model table, saved from the page, is live at once
        _css(browser, "#nav-models").click()
        until(lambda: _css(browser, "#models-save"), "the models page")
        browser.find_element(By.XPATH, "//button[text()='Add alias']").click()
        last = browser.find_elements(By.CSS_SELECTOR, "#aliases-table tr.alias-row")[-1]
        last.find_element(By.CSS_SELECTOR, ".alias").send_keys("smart")
        last.find_element(By.CSS_SELECTOR, ".target").send_keys("echo")
        _css(browser, "#models-save").click()
        until(lambda: api.app.state.models.resolve("smart") == "echo", "the alias live")
        until(lambda: "save model table: done" in _css(browser, "#status").text, "re-rendered")
        # a price with its cached-input price (the cache-write price left to the input's)
        _css(browser, "#price-model").send_keys(price_model)
        for field, value in (("#price-in", "2"), ("#price-out", "8"), ("#price-cached", "0.5")):
            _css(browser, field).clear()
            _css(browser, field).send_keys(value)
        _css(browser, "#price-set").click()
        priced = until(lambda: _css(browser, f'#prices-table tr[data-id="{price_model}"]'), "price")
        assert priced.text.split()[:6] == [price_model, "2", "8", "0.5", "=", "input"], priced.text

    await asyncio.to_thread(flow)
    assert 'smart = "echo"' in models_file.read_text()
    price = await api.app.state.store.get_price(price_model)
    assert (price.input_per_1m, price.cached_input_per_1m, price.cache_write_per_1m) == (
        2,
        0.5,
        None,
    )
