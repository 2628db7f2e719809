// The llmq console: a few pages over the admin API and /ui/api, rendered with DOM calls
// (text is never parsed as HTML). Loaded from our own origin; the page has no inline script.
"use strict";

const state = { role: null, tenant: "", csrf: "", timer: null };
const $ = (sel) => document.querySelector(sel);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET") opts.headers["x-csrf-token"] = state.csrf;
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (resp.status === 401 && !path.endsWith("/login")) { showLogin(); }
  if (!resp.ok) throw new Error((data && data.error && data.error.message) || `HTTP ${resp.status}`);
  return data;
}

function status(text, bad) {
  const el = $("#status");
  el.textContent = text || "";
  el.className = "status" + (bad ? " error" : "");
}

async function act(what, fn) {
  try { await fn(); status(what + ": done"); } catch (e) { status(what + ": " + e.message, true); }
}

const when = (ts) => (ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "—");
const day = (ts) => (ts ? h("span", { title: when(ts) }, when(ts).slice(0, 10)) : "—");
const num = (v) => (v === null || v === undefined ? "—" : typeof v === "number" ? v.toLocaleString("en") : v);
const secs = (v) => (v === null || v === undefined ? "—" : (v * 1000).toFixed(0) + " ms");
const pill = (text) => h("span", { class: "pill " + String(text).split(" ").pop() }, text);

function table(id, columns, rows) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-id": r.__id || null },
      columns.map((c) => h("td", { class: [c.num ? "num" : "", c.col ? "col-" + c.col : ""].join(" ").trim() || null }, c.value(r)))))));
}

function field(label, attrs) { return h("label", {}, label, h("input", attrs)); }

// --- session and navigation ---------------------------------------------------------------

const ADMIN_PAGES = [
  ["overview", "Overview"], ["tenants", "Tenants"], ["keys", "Keys"], ["models", "Models & prices"],
  ["usage", "Usage & spend"], ["ledger", "Ledger"], ["workers", "Workers & queues"], ["batches", "Batches & jobs"],
];
const TENANT_PAGES = [["mine", "My usage"]];

function pages() { return state.role === "admin" ? ADMIN_PAGES : TENANT_PAGES; }

function showLogin() {
  state.role = null;
  stopTimer();
  $("#nav").replaceChildren();
  $("#who").textContent = "";
  $("#logout").hidden = true;
  $("#page").replaceChildren();
  $("#login-page").hidden = false;
}

function loggedIn(s) {
  state.role = s.role; state.tenant = s.tenant; state.csrf = s.csrf;
  $("#login-page").hidden = true;
  $("#logout").hidden = false;
  $("#who").textContent = s.role === "admin" ? "admin" : "tenant " + s.tenant;
  $("#nav").replaceChildren(...pages().map(([id, title]) => h("a", { href: "#" + id, id: "nav-" + id }, title)));
  route();
}

function parseHash() {
  const [name, query] = location.hash.slice(1).split("?");
  return { name, params: new URLSearchParams(query || "") };
}

function stopTimer() { if (state.timer) clearInterval(state.timer); state.timer = null; }

function every(ms, fn) { stopTimer(); fn(); state.timer = setInterval(fn, ms); }

async function route() {
  if (!state.role) return;
  stopTimer();
  let { name, params } = parseHash();
  if (!pages().some(([id]) => id === name)) name = pages()[0][0];
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.id === "nav-" + name);
  const page = $("#page");
  page.replaceChildren(h("p", { class: "muted" }, "loading…"));
  page.dataset.page = name;
  try { await PAGES[name](page, params); } catch (e) { page.replaceChildren(h("p", { class: "error" }, e.message)); }
}

async function tenantNames() { return (await api("GET", "/admin/tenants")).data.map((t) => t.name); }

function tenantSelect(id, names, selected, allLabel) {
  const opts = (allLabel ? [["", allLabel]] : []).concat(names.map((n) => [n, n]));
  return h("select", { id }, opts.map(([v, t]) => h("option", { value: v, selected: v === selected }, t)));
}

// --- pages --------------------------------------------------------------------------------

const PAGES = {};

PAGES.overview = async (page) => {
  const card = (id, label) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, "…"));
  page.replaceChildren(
    h("h2", {}, "Overview"),
    h("div", { class: "cards" },
      card("ov-rps", "requests/s (1 min)"), card("ov-errors", "4xx / 5xx (1 min)"),
      card("ov-p50", "p50 first token"), card("ov-p99", "p99 first token"),
      card("ov-queue", "queued jobs"), card("ov-inflight", "jobs running"), card("ov-workers", "workers up")),
    h("div", { id: "ov-chart" }),
    h("p", { class: "muted", id: "ov-note" }, "Refreshed every 2 s; request figures are this api replica's."));
  const iso = (at) => new Date(at * 1000).toISOString();
  every(2000, async () => {
    try {
      const o = await api("GET", "/ui/api/overview");
      $("#ov-rps").textContent = o.requests_per_second.toFixed(2);
      $("#ov-errors").textContent = `${o.client_errors} / ${o.server_errors}`;
      $("#ov-p50").textContent = secs(o.ttft_p50);
      $("#ov-p99").textContent = secs(o.ttft_p99);
      $("#ov-queue").textContent = num(o.queue_depth);
      $("#ov-inflight").textContent = num(o.in_flight);
      $("#ov-workers").textContent = `${o.workers_up} / ${o.workers}`;
      const rows = o.history.flatMap((b) => [["ok", b.ok], ["4xx", b.client_errors], ["5xx", b.server_errors]]
        .map(([series, value]) => ({ day: iso(b.at), series, value })));
      $("#ov-chart").replaceChildren(window.llmqCharts.stackedBars("chart-requests",
        `requests per ${o.history.length ? o.window_seconds / o.history.length : 5} s, last minute`, rows, false, (t) => t.slice(11, 19)));
    } catch (e) { status(e.message, true); }
  });
};

const LIMITS = [
  ["rpm", "requests/min"], ["tpm", "tokens/min"], ["max_concurrent", "concurrent"],
  ["daily_tokens", "tokens/day"], ["monthly_tokens", "tokens/month"], ["spend_budget_usd", "USD/month"],
];

PAGES.tenants = async (page) => {
  const tenants = (await api("GET", "/admin/tenants")).data;
  const form = h("form", { id: "tenant-form", class: "inline" },
    field("name", { id: "tenant-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._@-]{0,63}" }),
    LIMITS.map(([k, t]) => field(t, { id: "tenant-" + k, type: "number", min: 0, step: k === "spend_budget_usd" ? "0.01" : "1", value: 0 })),
    field("models (comma-separated, empty = all)", { id: "tenant-models" }),
    h("button", { type: "submit", id: "tenant-save" }, "Create tenant"));
  let editing = null;
  const values = () => {
    const v = { models: $("#tenant-models").value.split(",").map((s) => s.trim()).filter(Boolean) };
    for (const [k] of LIMITS) v[k] = Number($("#tenant-" + k).value || 0);
    return v;
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (editing) act("update " + editing, async () => { await api("PATCH", "/admin/tenants/" + encodeURIComponent(editing), values()); route(); });
    else act("create tenant", async () => { await api("POST", "/admin/tenants", { name: $("#tenant-name").value.trim(), ...values() }); route(); });
  });
  const edit = (t) => {
    editing = t.name;
    $("#tenant-name").value = t.name; $("#tenant-name").disabled = true;
    for (const [k] of LIMITS) $("#tenant-" + k).value = t[k];
    $("#tenant-models").value = t.models.join(", ");
    $("#tenant-save").textContent = "Save limits of " + t.name;
  };
  const path = (t) => "/admin/tenants/" + encodeURIComponent(t.name);
  const actions = (t) => h("span", {},
    h("button", { class: "secondary", type: "button", onclick: () => edit(t) }, "Edit"), " ",
    t.status === "active"
      ? h("button", { class: "secondary", type: "button", onclick: () => act("suspend", async () => { await api("POST", path(t) + "/suspend"); route(); }) }, "Suspend")
      : h("button", { class: "secondary", type: "button", onclick: () => act("resume", async () => { await api("POST", path(t) + "/resume"); route(); }) }, "Resume"), " ",
    h("a", { href: "#keys?tenant=" + encodeURIComponent(t.name) }, "keys"), " ",
    h("button", { class: "danger", type: "button", onclick: () => {
      if (confirm(`Delete tenant ${t.name} and all its keys? Usage and ledger stay.`))
        act("delete", async () => { await api("DELETE", path(t)); route(); });
    } }, "Delete"));
  page.replaceChildren(h("h2", {}, "Tenants"), form,
    table("tenants-table", [
      { title: "name", value: (t) => t.name }, { title: "status", value: (t) => pill(t.status) },
      ...LIMITS.map(([k, title]) => ({ title, num: true, value: (t) => (t[k] ? num(t[k]) : "∞") })),
      { title: "models", value: (t) => (t.models.length ? t.models.join(", ") : "all") },
      { title: "created", value: (t) => when(t.created_at) }, { title: "", value: actions },
    ], tenants.map((t) => ({ ...t, __id: t.name }))));
};

// A key's own limits (inside its tenant's); empty when it has none.
const KEY_LIMITS = [["rpm", "rpm"], ["tpm", "tpm"], ["max_concurrent", "concurrent"], ["daily_tokens", "tokens/day"],
  ["monthly_tokens", "tokens/month"], ["spend_budget_usd", "USD/month"]];
const keyLimits = (k) => KEY_LIMITS.filter(([f]) => k[f]).map(([f, name]) => `${num(k[f])} ${name}`).join(", ");

PAGES.keys = async (page, params) => {
  const names = await tenantNames();
  const tenant = params.get("tenant") || names[0] || "";
  const select = tenantSelect("key-tenant", names, tenant);
  select.addEventListener("change", () => { location.hash = "#keys?tenant=" + encodeURIComponent(select.value); });
  const out = h("div", { id: "new-key" });
  const form = h("form", { class: "inline", id: "key-form" }, h("label", {}, "tenant", select),
    field("label", { id: "key-label" }), field("owner", { id: "key-owner" }),
    field("expires in (30d, 12h; empty = never)", { id: "key-expires-in", pattern: "[0-9.]+[smhdw]?" }),
    field("models (comma-separated, empty = tenant's)", { id: "key-models" }),
    KEY_LIMITS.map(([k, t]) => field(t + " (0 = tenant's)", { id: "key-" + k, type: "number", min: 0, step: k === "spend_budget_usd" ? "0.01" : "1", value: 0 })),
    h("button", { type: "submit", id: "key-create" }, "Create key"));
  const keyBody = () => {
    const body = { label: $("#key-label").value, owner: $("#key-owner").value.trim(),
      models: $("#key-models").value.split(",").map((m) => m.trim()).filter(Boolean) };
    for (const [k] of KEY_LIMITS) body[k] = Number($("#key-" + k).value || 0);
    const expires = $("#key-expires-in").value.trim();
    if (expires) body.expires_in = expires;
    return body;
  };
  const keys = tenant ? (await api("GET", `/admin/tenants/${encodeURIComponent(tenant)}/keys`)).data : [];
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("create key", async () => {
      const k = await api("POST", `/admin/tenants/${encodeURIComponent(tenant)}/keys`, keyBody());
      await route();
      $("#new-key").replaceChildren(h("p", {}, "The new key, shown this once (copy it now):"),
        h("p", { class: "secret", id: "new-key-value" }, k.key));
    });
  });
  const revoke = (k) => h("button", { class: "danger", type: "button", "data-key-id": k.id, onclick: () => {
    if (confirm(`Revoke ${k.prefix}…? Requests with it are refused at once.`))
      act("revoke", async () => { await api("DELETE", `/admin/tenants/${encodeURIComponent(tenant)}/keys/${k.id}`); route(); });
  } }, "Revoke");
  page.replaceChildren(h("h2", {}, "API keys"),
    h("p", { class: "muted" }, "A key's own limits apply inside its tenant's (a request must pass both); 0 leaves the tenant's. Times are UTC; a key's last use is when its last request ended."),
    form, out,
    names.length ? table("keys-table", [
      { title: "id", value: (k) => k.id }, { title: "key", col: "key", value: (k) => k.prefix + "…" },
      { title: "label", value: (k) => k.label }, { title: "owner", value: (k) => k.owner || "" },
      { title: "limits", value: keyLimits }, { title: "models", value: (k) => (k.models || []).join(", ") || "tenant's" },
      { title: "expires", col: "time", value: (k) => day(k.expires_at) }, { title: "created", col: "time", value: (k) => day(k.created_at) },
      { title: "last used", col: "last-used", value: (k) => when(k.last_used_at) }, { title: "", value: revoke },
    ], keys.map((k) => ({ ...k, __id: k.id }))) : h("p", {}, "Create a tenant first."));
};

PAGES.models = async (page) => {
  const [m, prices] = await Promise.all([api("GET", "/ui/api/models"), api("GET", "/admin/prices")]);
  const aliasRow = (a = "", t = "") => h("tr", { class: "alias-row" },
    h("td", {}, h("input", { class: "alias", value: a })), h("td", {}, h("input", { class: "target", value: t })));
  const defRow = (name = "", d = {}) => h("tr", { class: "default-row" },
    h("td", {}, h("input", { class: "model", value: name })),
    h("td", {}, h("input", { class: "temperature", type: "number", step: "0.05", value: d.temperature ?? "" })),
    h("td", {}, h("input", { class: "max_tokens", type: "number", min: 1, value: d.max_tokens ?? "" })));
  const aliases = h("tbody", {}, Object.entries(m.aliases).map(([a, t]) => aliasRow(a, t)));
  const defaults = h("tbody", {}, Object.entries(m.defaults).map(([n, d]) => defRow(n, d)));
  const save = () => act("save model table", async () => {
    const table = { aliases: {}, defaults: {} };
    for (const r of aliases.querySelectorAll("tr")) {
      const a = r.querySelector(".alias").value.trim(), t = r.querySelector(".target").value.trim();
      if (a && t) table.aliases[a] = t;
    }
    for (const r of defaults.querySelectorAll("tr")) {
      const n = r.querySelector(".model").value.trim();
      if (!n) continue;
      const t = r.querySelector(".temperature").value, x = r.querySelector(".max_tokens").value;
      table.defaults[n] = { temperature: t === "" ? null : Number(t), max_tokens: x === "" ? null : Number(x) };
    }
    await api("PUT", "/ui/api/models", table);
    await route();
  });
  const priceForm = h("form", { class: "inline", id: "price-form" },
    field("model", { id: "price-model", required: true }),
    field("USD / 1M input tokens", { id: "price-in", type: "number", step: "0.0001", min: 0, value: 0 }),
    field("USD / 1M output tokens", { id: "price-out", type: "number", step: "0.0001", min: 0, value: 0 }),
    field("USD / 1M cached input (empty = input)", { id: "price-cached", type: "number", step: "0.0001", min: 0 }),
    field("USD / 1M cache writes (empty = input)", { id: "price-write", type: "number", step: "0.0001", min: 0 }),
    h("button", { type: "submit", id: "price-set" }, "Set price"));
  priceForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("set price", async () => {
      const price = { input_per_1m: Number($("#price-in").value), output_per_1m: Number($("#price-out").value) };
      if ($("#price-cached").value !== "") price.cached_input_per_1m = Number($("#price-cached").value);
      if ($("#price-write").value !== "") price.cache_write_per_1m = Number($("#price-write").value);
      await api("PUT", "/admin/prices/" + encodeURIComponent($("#price-model").value.trim()), price);
      route();
    });
  });
  page.replaceChildren(h("h2", {}, "Models and prices"),
    h("p", {}, "Served now: ", m.served.length ? m.served.join(", ") : "no live worker"),
    h("h3", {}, "Aliases"),
    h("table", { id: "aliases-table" }, h("thead", {}, h("tr", {}, h("th", {}, "alias"), h("th", {}, "model"))), aliases),
    h("h3", {}, "Defaults for absent fields"),
    h("table", { id: "defaults-table" }, h("thead", {}, h("tr", {}, h("th", {}, "model"), h("th", {}, "temperature"), h("th", {}, "max_tokens"))), defaults),
    m.editable
      ? h("div", { class: "toolbar" },
        h("button", { type: "button", class: "secondary", onclick: () => aliases.append(aliasRow()) }, "Add alias"),
        h("button", { type: "button", class: "secondary", onclick: () => defaults.append(defRow()) }, "Add defaults"),
        h("button", { type: "button", id: "models-save", onclick: save }, "Save (live reload)"),
        h("span", { class: "muted" }, m.file))
      : h("p", { class: "muted" }, "Read-only: set LLMQ_MODELS_FILE to edit the table here."),
    h("h3", {}, "Prices"), priceForm,
    table("prices-table", [
      { title: "model", value: (p) => p.model },
      { title: "USD / 1M input", num: true, value: (p) => p.input_per_1m },
      { title: "USD / 1M output", num: true, value: (p) => p.output_per_1m },
      { title: "USD / 1M cached input", num: true, value: (p) => p.cached_input_per_1m ?? "= input" },
      { title: "USD / 1M cache writes", num: true, value: (p) => p.cache_write_per_1m ?? "= input" },
      { title: "", value: (p) => h("button", { class: "danger", type: "button", onclick: () => act("delete price", async () => { await api("DELETE", "/admin/prices/" + encodeURIComponent(p.model)); route(); }) }, "Delete") },
    ], Object.entries(prices.data).map(([model, p]) => ({ model, ...p, __id: model }))));
};

function usageView(rows, by) {
  const points = (key) => rows.map((r) => ({ day: r.day, series: r[by], value: r[key] }));
  return [
    window.llmqCharts.stackedBars("chart-tokens", `tokens per day, by ${by}`, points("total_tokens"), false),
    window.llmqCharts.stackedBars("chart-cost", `spend per day (USD), by ${by}`, points("cost_usd"), true),
    table("usage-table", [
      { title: "day", value: (r) => r.day }, { title: "tenant", value: (r) => r.tenant }, { title: "model", value: (r) => r.model },
      { title: "requests", num: true, value: (r) => num(r.requests) }, { title: "failed", num: true, value: (r) => num(r.failed) },
      { title: "prompt", num: true, value: (r) => num(r.prompt_tokens) }, { title: "completion", num: true, value: (r) => num(r.completion_tokens) },
      { title: "cache hits", num: true, value: (r) => num(r.cache_hits || 0) },
      { title: "USD", num: true, value: (r) => r.cost_usd.toFixed(4) },
    ], rows),
    h("h3", {}, "Response cache: hit rate per model and tenant"),
    table("cache-table", [
      { title: "tenant", value: (r) => r.tenant }, { title: "model", value: (r) => r.model },
      { title: "requests", num: true, value: (r) => num(r.requests) }, { title: "cache hits", num: true, value: (r) => num(r.hits) },
      { title: "hit rate", num: true, value: (r) => (r.requests ? (100 * r.hits / r.requests).toFixed(1) : "0.0") + " %" },
    ], cacheRates(rows)),
  ];
}

function cacheRates(rows) {
  // answers from the cache (hits and joins) over every request, per tenant and model
  const by = new Map();
  for (const r of rows) {
    const id = `${r.tenant}\t${r.model}`;
    const seen = by.get(id) || { tenant: r.tenant, model: r.model, requests: 0, hits: 0, __id: id };
    seen.requests += r.requests; seen.hits += r.cache_hits || 0;
    by.set(id, seen);
  }
  return [...by.values()].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.model.localeCompare(b.model));
}

PAGES.usage = async (page, params) => {
  const names = await tenantNames();
  const tenant = params.get("tenant") || "", days = params.get("days") || "14", by = params.get("by") || (tenant ? "model" : "tenant");
  const rows = (await api("GET", `/ui/api/usage?tenant=${encodeURIComponent(tenant)}&days=${days}`)).data;
  const sel = tenantSelect("usage-tenant", names, tenant, "all tenants");
  const daysIn = h("input", { id: "usage-days", type: "number", min: 1, max: 400, value: days });
  const bySel = h("select", { id: "usage-by" }, ["model", "tenant"].map((b) => h("option", { value: b, selected: b === by }, b)));
  const go = () => {
    const next = `#usage?tenant=${encodeURIComponent(sel.value)}&days=${daysIn.value}&by=${bySel.value}`;
    if (location.hash === next) route(); else location.hash = next;
  };
  page.replaceChildren(h("h2", {}, "Usage and spend"),
    h("div", { class: "toolbar" }, h("label", {}, "tenant", sel), h("label", {}, "days", daysIn), h("label", {}, "split by", bySel),
      h("button", { type: "button", id: "usage-refresh", onclick: go }, "Show"),
      h("a", { id: "usage-csv", href: `/ui/api/usage.csv?tenant=${encodeURIComponent(tenant)}&days=${days}` }, "CSV export")),
    ...usageView(rows, by));
};

PAGES.ledger = async (page, params) => {
  const tenant = params.get("tenant") || "", q = (params.get("q") || "").toLowerCase();
  const size = 50, pageNo = Number(params.get("page") || 0);
  const want = Math.min(10000, q ? 10000 : (pageNo + 1) * size + 1);
  const all = (await api("GET", `/admin/ledger?count=${want}${tenant ? "&tenant=" + encodeURIComponent(tenant) : ""}`)).data;
  const hits = q ? all.filter((e) => [e.tenant, e.model, e.job_id, e.status, e.key_id || "", e.user || ""].some((s) => s.toLowerCase().includes(q))) : all;
  const shown = hits.slice(pageNo * size, pageNo * size + size);
  const tIn = h("input", { id: "ledger-tenant", value: tenant, placeholder: "all" });
  const qIn = h("input", { id: "ledger-q", value: q, placeholder: "model, job, key, user, status" });
  const go = (p) => { location.hash = `#ledger?tenant=${encodeURIComponent(tIn.value.trim())}&q=${encodeURIComponent(qIn.value.trim())}&page=${p}`; };
  const form = h("form", { class: "inline" }, h("label", {}, "tenant", tIn), h("label", {}, "search", qIn), h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go(0); });
  page.replaceChildren(h("h2", {}, "Usage ledger"), form,
    table("ledger-table", [
      { title: "time (UTC)", col: "time", value: (e) => when(e.ts) }, { title: "tenant", value: (e) => e.tenant }, { title: "model", value: (e) => e.model },
      { title: "job", col: "id", value: (e) => e.job_id }, { title: "key", col: "key", value: (e) => e.key_id || "" },
      ...(shown.some((e) => e.user) ? [{ title: "user", value: (e) => e.user }] : []),
      { title: "prompt", num: true, value: (e) => num(e.prompt_tokens) },
      { title: "completion", num: true, value: (e) => num(e.completion_tokens) }, { title: "reserved", num: true, value: (e) => num(e.reserved_tokens) },
      { title: "USD", num: true, value: (e) => e.cost_usd.toFixed(6) }, { title: "status", value: (e) => e.status },
    ], shown),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "secondary", disabled: pageNo === 0, onclick: () => go(pageNo - 1) }, "← newer"),
      h("span", {}, `page ${pageNo + 1}`),
      h("button", { type: "button", class: "secondary", disabled: hits.length <= (pageNo + 1) * size, onclick: () => go(pageNo + 1) }, "older →")));
};

PAGES.workers = async (page) => {
  const box = h("div", {});
  page.replaceChildren(h("h2", {}, "Workers and queues"), h("p", { class: "muted" }, "What `llmq top` shows, refreshed every 2 s."), box);
  every(2000, async () => {
    try {
      const t = await api("GET", "/ui/api/top");
      box.replaceChildren(
        h("h3", {}, "Workers"),
        table("workers-table", [
          { title: "id", value: (w) => w.id }, { title: "backend", value: (w) => w.backend }, { title: "models", value: (w) => w.models.join(", ") },
          { title: "in flight / capacity", num: true, value: (w) => `${w.in_flight} / ${w.capacity}` },
          { title: "state", value: (w) => pill(w.state) }, { title: "circuit", col: "circuit", value: (w) => pill(w.circuit) },
          { title: "jobs", num: true, value: (w) => num(w.jobs) }, { title: "errors", num: true, value: (w) => num(w.errors) },
          { title: "seen", num: true, value: (w) => w.seen_ago + " s ago" },
        ], t.workers),
        h("h3", {}, "Models and queues"),
        table("queues-table", [
          { title: "model", value: (m) => m.name }, { title: "workers", num: true, value: (m) => m.workers },
          { title: "in flight / capacity", num: true, value: (m) => `${m.in_flight} / ${m.capacity}` },
          { title: "queued", num: true, value: (m) => m.queued }, { title: "delivered, unacked (lag)", num: true, value: (m) => m.unacked },
          { title: "waiting pulls", num: true, value: (m) => m.waiting },
          { title: "est. queue wait", num: true, col: "wait", value: (m) => (m.wait === null || m.wait === undefined ? "?" : m.wait.toFixed(1) + " s") },
        ], t.models),
        h("h3", {}, "api replicas"),
        table("apis-table", [
          { title: "instance", value: (a) => a.instance }, { title: "address", value: (a) => `${a.host}:${a.port}` },
          { title: "open streams", num: true, value: (a) => a.open_streams }, { title: "accepting", value: (a) => (a.accepting ? "yes" : "no") },
        ], t.apis),
        t.errors.length ? h("p", { class: "error" }, t.errors.join("; ")) : "");
    } catch (e) { status(e.message, true); }
  });
};

function workTables(w, cancel) {
  const c = (kind, item) => (cancel && ["validating", "in_progress", "queued"].includes(item.status)
    ? h("button", { class: "danger", type: "button", onclick: () => {
      if (confirm(`Cancel ${kind} ${item.id}?`)) act("cancel", async () => { await api("POST", `/ui/api/${kind}s/${encodeURIComponent(w.tenant)}/${item.id}/cancel`); route(); });
    } }, "Cancel") : "");
  const counts = (b) => (b.request_counts ? `${b.request_counts.completed}/${b.request_counts.total} (${b.request_counts.failed} failed)` : "");
  return [
    h("h4", {}, "Batches"),
    table("batches-" + w.tenant, [
      { title: "batch", value: (b) => b.id }, { title: "status", value: (b) => pill(b.status) },
      { title: "done / total", value: counts }, { title: "created", value: (b) => when(b.created_at) },
      { title: "", value: (b) => c("batch", b) },
    ], w.batches),
    h("h4", {}, "Async jobs"),
    table("jobs-" + w.tenant, [
      { title: "job", value: (j) => j.id }, { title: "status", value: (j) => pill(j.status) },
      { title: "model", value: (j) => j.model || "" }, { title: "created", value: (j) => when(j.created_at) },
      { title: "", value: (j) => c("job", j) },
    ], w.jobs),
  ];
}

PAGES.batches = async (page, params) => {
  const names = await tenantNames();
  const tenant = params.get("tenant") || "";
  const data = (await api("GET", "/ui/api/batches?tenant=" + encodeURIComponent(tenant))).data;
  const sel = tenantSelect("batches-tenant", names, tenant, "all tenants");
  sel.addEventListener("change", () => { location.hash = "#batches?tenant=" + encodeURIComponent(sel.value); });
  page.replaceChildren(h("h2", {}, "Batches and async jobs"), h("div", { class: "toolbar" }, h("label", {}, "tenant", sel)),
    ...data.filter((w) => tenant || w.batches.length || w.jobs.length).map((w) => h("div", {}, h("h3", {}, w.tenant), ...workTables(w, true))),
    data.some((w) => w.batches.length || w.jobs.length) ? "" : h("p", { class: "muted" }, "No batches or async jobs."));
};

PAGES.mine = async (page) => {
  const me = await api("GET", "/ui/api/me");
  const t = me.limits;
  page.replaceChildren(h("h2", {}, "Tenant ", t.name, " ", pill(t.status)),
    h("h3", {}, "Limits"),
    table("limits-table", LIMITS.map(([, title]) => ({ title, num: true, value: (r) => r[title] })),
      [Object.fromEntries(LIMITS.map(([k, title]) => [title, t[k] ? num(t[k]) : "unlimited"]))]),
    h("p", {}, "Models: ", t.models.length ? t.models.join(", ") : "all"),
    h("h3", {}, "Usage, last 14 days"), ...usageView(me.usage, "model"),
    h("h3", {}, "Batches and async jobs"), ...workTables(me, false));
};

// --- start --------------------------------------------------------------------------------

async function start() {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#login-error").textContent = "";
    try {
      const s = await api("POST", "/ui/api/login", { token: $("#token").value });
      $("#token").value = "";
      loggedIn(s);
    } catch (e) { $("#login-error").textContent = e.message; }
  });
  $("#logout").addEventListener("click", () => act("log out", async () => { await api("POST", "/ui/api/logout"); showLogin(); }));
  window.addEventListener("hashchange", route);
  const s = await api("GET", "/ui/api/session").catch(() => ({ logged_in: false }));
  if (s.logged_in) loggedIn(s); else showLogin();
}

start();
