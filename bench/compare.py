"""llmq next to a call straight to the upstream and next to the LiteLLM proxy, in one run.

Starts its own nats-server and Valkey/Redis (free loopback ports), the fast mock upstream
(`bench/mock_upstream.py`, `--words` content chunks when streaming), an llmq api and one
`openai`-backend worker in front of the mock with API keys and the quota script on (a tenant
with every limit set), and, when given a python that has `litellm[proxy]`, the LiteLLM proxy
on the same mock. Each target gets the same load (wrk with one thread when installed, else
our own asyncio generator), json and stream, at each concurrency; CPU seconds are read from
/proc for each whole process tree (api + worker + nats-server + Valkey for llmq; the proxy and
its children for LiteLLM) before and after the run and divided by the requests served.

    .venv/bin/python bench/compare.py                                   # llmq and direct only
    .venv/bin/python bench/compare.py --litellm-python /tmp/litellm-venv/bin/python

LiteLLM runs without a database, so its only key is the master key (no per-key quota script);
its cost map is read locally and its telemetry is off: every process talks to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import _bench_tenant  # noqa: E402
from bench.processes import (  # noqa: E402
    cpu_seconds,
    load_average,
    process_tree,
    spawn,
    stop_all,
    wait_until_served,
)
from llmq.embedded import EmbeddedNats, EmbeddedRedis, free_port  # noqa: E402

# The mock with N content chunks per stream, whether or not its command line has `--words`:
# its chunk builder is wrapped so every streamed answer carries the words given.
_MOCK = """
import sys
sys.path.insert(0, sys.argv[3])
import uvicorn
from bench import mock_upstream as mock
words = [mock._WORDS[i % len(mock._WORDS)] for i in range(int(sys.argv[2]))]
build, cache = mock._chunks, {}
def chunks(model, *_):
    if model not in cache:
        saved = list(mock._WORDS)
        mock._WORDS[:] = words
        try:
            cache[model] = build(model)
        finally:
            mock._WORDS[:] = saved
    return cache[model]
mock._chunks = chunks
uvicorn.run(mock.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"errors": %%d, "non2xx": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Target:
    """One thing under load: where to send, with which key, and whose CPU to count."""

    name: str
    url: str
    key: str = ""
    roots: dict[str, int] = field(default_factory=dict)  # part name -> pid of its tree root


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    cpu_us: dict[str, float]  # per part, per request
    load: str

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_us.values())


def _body(stream: bool) -> str:
    body: dict[str, object] = {
        "model": "bench",
        "messages": [{"role": "user", "content": "hello from the mock"}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


async def _wrk(target: Target, stream: bool, conc: int, seconds: float, tmp: Path) -> dict:
    auth = f'wrk.headers["Authorization"] = "Bearer {target.key}"' if target.key else ""
    script = tmp / "load.lua"
    script.write_text(_WRK_SCRIPT % (json.dumps(_body(stream)), auth))
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), target.url, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    line = next(x for x in out.decode().splitlines() if x.startswith("RESULT "))
    r = json.loads(line[7:])
    if r["errors"] or r["non2xx"]:
        raise RuntimeError(f"{target.name}: {r['errors']} errors, {r['non2xx']} non-2xx")
    return {
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
    }


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """One request on a keep-alive connection; reads a Content-Length or chunked body whole."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, chunked = int(head[9:12]), 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def _asyncio_load(target: Target, stream: bool, conc: int, seconds: float) -> dict:
    """The fallback generator (no wrk): `conc` keep-alive connections, each sending its next
    request when the last one's answer has been read whole."""
    from urllib.parse import urlsplit

    url = urlsplit(target.url)
    payload = _body(stream).encode()
    auth = f"Authorization: Bearer {target.key}\r\n" if target.key else ""
    req = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status = await asyncio.wait_for(_call(reader, writer, req), 10)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"{target.name}: status {status}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*[loop() for _ in range(conc)])
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "rps": len(latencies) / elapsed,
    }


async def measure(
    target: Target, stream: bool, conc: int, seconds: float, use_wrk: bool, tmp: Path
) -> Result:
    async def drive(duration: float) -> dict:
        if use_wrk:
            return await _wrk(target, stream, conc, duration, tmp)
        return await _asyncio_load(target, stream, conc, duration)

    await drive(max(1.0, seconds / 4))  # warm-up: connections, caches, JIT-free but lazy paths
    trees = {part: process_tree(pid) for part, pid in target.roots.items()}
    before = {part: cpu_seconds(pids) for part, pids in trees.items()}
    load = load_average()
    r = await drive(seconds)
    used = {part: cpu_seconds(pids) - before[part] for part, pids in trees.items()}
    n = max(1, r["requests"])
    return Result(
        r["p50_ms"], r["p99_ms"], r["rps"], n, {p: s * 1e6 / n for p, s in used.items()}, load
    )


def _litellm(python: str, mock_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """The LiteLLM proxy on the mock: one model `bench`, a master key, nothing off-host."""
    port, key = free_port(), "sk-bench-master"
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: sk-mock\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {key}\n"
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
    }
    cli = Path(python).parent / "litellm"
    argv = [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return spawn(argv, env, tmp / "litellm.log"), port, key


def _print_table(rows: list[tuple[str, int, dict[str, Result]]], words: int) -> None:
    head = (
        "| mode | conc | load | direct p50 | llmq p50 | llmq p99 | llmq req/s | llmq CPU µs/req "
        "| LiteLLM proxy p50 | LiteLLM req/s | LiteLLM CPU µs/req |"
    )
    print(head)
    print("|" + "---|" * 11)
    for mode, conc, res in rows:
        d, q, lite = res["direct"], res["llmq"], res.get("litellm")
        lcols = (
            f"{lite.p50_ms:.2f} ms | {lite.rps:,.0f} | {lite.cpu_total:,.0f}"
            if lite
            else "- | - | -"
        )
        print(
            f"| {mode} | {conc} | {q.load} | {d.p50_ms:.2f} ms | {q.p50_ms:.2f} ms "
            f"| {q.p99_ms:.2f} ms | {q.rps:,.0f} | {q.cpu_total:,.0f} | {lcols} |"
        )
    print("\nllmq CPU µs per request, per process:")
    api_json = {conc: res["llmq"].cpu_us["api"] for mode, conc, res in rows if mode == "json"}
    for mode, conc, res in rows:
        parts = ", ".join(f"{p} {v:,.0f}" for p, v in res["llmq"].cpu_us.items())
        extra = ""
        if mode == "stream" and conc in api_json:
            # what a stream costs the api over a json request, per SSE event it relays
            per_chunk = (res["llmq"].cpu_us["api"] - api_json[conc]) / (words + 3)
            extra = f"; api per relayed chunk over json {per_chunk:,.1f}"
        print(f"  {mode} c={conc}: {parts}{extra}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--litellm-python", help="a python with litellm[proxy] installed")
    parser.add_argument("--seconds", type=float, default=8, help="measured seconds per cell")
    parser.add_argument("--words", type=int, default=17, help="content chunks (+3 SSE events)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--modes", nargs="+", default=["json", "stream"])
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    args = parser.parse_args()
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))

    tmp = Path(tempfile.mkdtemp(prefix="llmq-compare-"))
    nats = EmbeddedNats(tmp / "nats")
    redis = EmbeddedRedis(tmp / "redis")
    mock_port, api_port = free_port(), free_port()
    env = {
        "LLMQ_NATS_URL": nats.url,
        "LLMQ_REDIS_URL": redis.url,
        "LLMQ_LOG_LEVEL": "WARNING",
        "LLMQ_AUTH_MODE": "keys",
    }
    key = await _bench_tenant(redis.url)
    llmq = [sys.executable, "-m", "llmq.cli"]
    worker = [*llmq, "worker", "--model", "bench", "--capacity", str(args.capacity)]
    mock_argv = [sys.executable, "-c", _MOCK, str(mock_port), str(args.words), str(ROOT)]
    procs = [
        spawn(mock_argv, {}, tmp / "mock.log"),
        spawn([*llmq, "api", "--host", "127.0.0.1", "--port", str(api_port)], env, tmp / "api.log"),
        spawn(
            [*worker, "--backend", "openai"],
            {**env, "LLMQ_BACKEND_URL": f"http://127.0.0.1:{mock_port}/v1"},
            tmp / "worker.log",
        ),
    ]
    path = "/v1/chat/completions"
    targets = {
        "direct": Target("direct", f"http://127.0.0.1:{mock_port}{path}"),
        "llmq": Target(
            "llmq",
            f"http://127.0.0.1:{api_port}{path}",
            key,
            {
                "api": procs[1].pid,
                "worker": procs[2].pid,
                "nats": nats.proc.pid,
                "valkey": redis.proc.pid,
            },
        ),
    }
    try:
        if args.litellm_python:
            proxy, port, master = _litellm(args.litellm_python, mock_port, tmp)
            procs.append(proxy)
            targets["litellm"] = Target(
                "litellm", f"http://127.0.0.1:{port}{path}", master, {"proxy": proxy.pid}
            )
        await wait_until_served(f"http://127.0.0.1:{mock_port}/v1/models", "mock")
        auth = {"authorization": f"Bearer {key}"}
        await wait_until_served(f"http://127.0.0.1:{api_port}/v1/models", '"bench"', headers=auth)
        if "litellm" in targets:
            lite = targets["litellm"]
            await wait_until_served(
                lite.url.replace(path, "/v1/models"), '"bench"', timeout=180,
                headers={"authorization": f"Bearer {lite.key}"},
            )  # fmt: skip
        print(
            f"cores={os.cpu_count()} loadgen={'wrk -t1' if use_wrk else 'asyncio'} "
            f"seconds={args.seconds} stream SSE events={args.words + 3} load={load_average()}"
        )
        rows = []
        for mode in args.modes:
            for conc in args.concurrency:
                res = {
                    name: await measure(t, mode == "stream", conc, args.seconds, use_wrk, tmp)
                    for name, t in targets.items()
                }
                rows.append((mode, conc, res))
                print(f"  {mode} c={conc} done (load {load_average()})", file=sys.stderr)
        _print_table(rows, args.words)
    finally:
        stop_all(procs, nats, redis)
    shutil.rmtree(tmp, ignore_errors=True)  # reached only after a clean run: logs stay otherwise


if __name__ == "__main__":
    asyncio.run(main())
