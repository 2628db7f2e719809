"""llmq next to a call straight to the upstream and next to the LiteLLM proxy, in one run.

Starts its own nats-server and Valkey/Redis (free loopback ports), the fast mock upstream
(`bench/mock_upstream.py`, `--words` content chunks when streaming), an llmq api and one
`openai`-backend worker in front of the mock with API keys and the quota script on (a tenant
with every limit set), and, when given a python that has `litellm[proxy]`, the LiteLLM proxy
on the same mock, measured after llmq's cells so that its proxy never runs beside them (an
idle proxy still takes CPU). Each target gets the same load (wrk with one thread when
installed, else our own asyncio generator), json and stream, at each concurrency; CPU
seconds are read from /proc for each whole process tree (api + worker + nats-server + Valkey
for llmq; the proxy and its children for LiteLLM) before and after the run and divided by the
requests served.

    .venv/bin/python bench/compare.py                                   # llmq and direct only
    .venv/bin/python bench/compare.py --litellm-python /tmp/litellm-venv/bin/python
    .venv/bin/python bench/compare.py --portkey /tmp/portkey     # npm i @portkey-ai/gateway there
    .venv/bin/python bench/compare.py --quick                           # smoke: 2 s, c=32
    .venv/bin/python bench/compare.py --upstream http https --modes stream   # TLS cost
    .venv/bin/python bench/compare.py --quick --profile 25              # + cProfile tops

It prints a markdown table ready to paste into docs/benchmarks.md, then the CPU per request
of each llmq process.

Portkey's open-source gateway (Node) runs headless with NODE_ENV=production; each request
names the provider (`openai`) and the mock as its custom host in headers, as Portkey documents.
It has no keys or quotas of its own.

LiteLLM runs without a database, so its only key is the master key (no per-key quota script);
its cost map is read locally and its telemetry is off: every process talks to loopback only.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Target, asyncio_load, wrk  # noqa: E402
from bench.processes import (  # noqa: E402
    cpu_seconds,
    llmq_stack,
    load_average,
    process_tree,
    spawn,
    stop_all,
    wait_until_served,
)
from llmq import event_loop  # noqa: E402
from llmq.embedded import free_port  # noqa: E402

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
tls = dict(ssl_certfile=sys.argv[4], ssl_keyfile=sys.argv[5]) if len(sys.argv) > 5 else {}
uvicorn.run(mock.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, **tls)
"""


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


async def measure(
    target: Target, stream: bool, conc: int, seconds: float, use_wrk: bool, tmp: Path
) -> Result:
    async def drive(duration: float) -> dict:
        if use_wrk:
            return await wrk(target, stream, conc, duration, tmp)
        return await asyncio_load(target, stream, conc, duration)

    await drive(max(1.0, seconds / 4))  # warm-up: connections, caches, JIT-free but lazy paths
    trees = {part: process_tree(pid) for part, pid in target.roots.items()}
    before = {part: cpu_seconds(pids) for part, pids in trees.items()}
    load = load_average()
    for pid in target.profiled:
        os.kill(pid, signal.SIGUSR1)
    r = await drive(seconds)
    for pid in target.profiled:
        os.kill(pid, signal.SIGUSR2)
    used = {part: cpu_seconds(pids) - before[part] for part, pids in trees.items()}
    n = max(1, r["requests"])
    cpu = {p: s * 1e6 / n for p, s in used.items()}
    return Result(r["p50_ms"], r["p99_ms"], r["rps"], r["requests"], cpu, load)


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


def _portkey(folder: str, mock_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], Target]:
    """Portkey's gateway from `folder/node_modules`, sent to the mock by request headers."""
    port = free_port()
    server = Path(folder) / "node_modules/@portkey-ai/gateway/build/start-server.js"
    argv = ["node", str(server), f"--port={port}", "--headless"]
    proc = spawn(argv, {"NODE_ENV": "production"}, tmp / "portkey.log")
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{mock_port}/v1",
    }
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return proc, Target("portkey", url, "sk-mock", {"proxy": proc.pid}, headers=headers)


def _proxy_cells(res: Result | None) -> str:
    if res is None:
        return "- | - | -"
    if not res.requests:
        return "failed (see stderr) | - | -"
    return f"{res.p50_ms:.2f} ms | {res.rps:,.0f} | {res.cpu_total:,.0f}"


def _print_table(rows: list[tuple[str, str, int, dict[str, Result]]], words: int) -> None:
    """The issue's table, ready to paste, then the CPU split per llmq process."""
    schemes = {scheme for scheme, *_ in rows}
    up = "upstream | " if len(schemes) > 1 else ""
    proxies = [p for p in ("portkey", "litellm") if any(p in res for *_, res in rows)]
    names = {"portkey": "Portkey", "litellm": "LiteLLM"}
    extra = "".join(
        f" {names[p]} p50 | {names[p]} req/s | {names[p]} CPU µs/req |" for p in proxies
    )
    print(
        f"| {up}mode | conc | load | direct p50 | llmq p50 | llmq added p50 | llmq p99 "
        f"| llmq req/s | llmq CPU µs/req |{extra}"
    )
    print("|" + "---|" * (9 + 3 * len(proxies) + bool(up)))
    for scheme, mode, conc, res in rows:
        d, q = res["direct"], res["llmq"]
        cols = "".join(f" {_proxy_cells(res.get(p))} |" for p in proxies)
        first = f"{scheme} | " if up else ""
        print(
            f"| {first}{mode} | {conc} | {q.load} | {d.p50_ms:.2f} ms | {q.p50_ms:.2f} ms "
            f"| {q.p50_ms - d.p50_ms:.2f} ms | {q.p99_ms:.2f} ms | {q.rps:,.0f} "
            f"| {q.cpu_total:,.0f} |{cols}"
        )
    parts = list(rows[0][3]["llmq"].cpu_us)
    print(f"\nllmq CPU µs per request, per process ({words + 3} SSE events per stream):\n")
    print(f"| {up}mode | conc | " + " | ".join(parts) + " | api per relayed event over json |")
    print("|" + "---|" * (3 + len(parts) + bool(up)))
    api_json = {
        (scheme, conc): res["llmq"].cpu_us["api"]
        for scheme, mode, conc, res in rows
        if mode == "json"
    }
    for scheme, mode, conc, res in rows:
        cells = " | ".join(f"{v:,.0f}" for v in res["llmq"].cpu_us.values())
        extra = "-"
        if mode == "stream" and (scheme, conc) in api_json:
            # what a stream costs the api over a json request, per SSE event it relays
            extra = f"{(res['llmq'].cpu_us['api'] - api_json[(scheme, conc)]) / (words + 3):,.1f}"
        first = f"{scheme} | " if up else ""
        print(f"| {first}{mode} | {conc} | {cells} | {extra} |")


def _profiled(folder: Path) -> Callable[[str], list[str]]:
    """The api's and the worker's python under cProfile (CPU time), output in `folder`."""

    def wrap(part: str) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "profiled.py"), str(folder / f"{part}.prof")]

    return wrap


def _print_profiles(folder: Path, top: int) -> None:
    for prof in sorted(folder.glob("*.prof")):
        out = io.StringIO()
        stats = pstats.Stats(str(prof), stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n### {prof.stem}: top {top} functions by own CPU time\n")
        text = out.getvalue()
        print(text[text.find("   ncalls") :].rstrip())


async def _run_scheme(
    args: argparse.Namespace, scheme: str, tmp: Path, use_wrk: bool, profiles: Path | None
) -> list[tuple[str, str, int, dict[str, Result]]]:
    """Every cell against one llmq stack whose upstream (the mock) speaks `scheme`."""
    mock_env: dict[str, str] = {}
    tls: list[str] = []
    if scheme == "https":
        from tests.worker.upstream.pki import make_pki

        pki = make_pki(tmp, f"compare-{os.getpid()}")
        tls = [str(pki.cert), str(pki.key)]
        mock_env["SSL_CERT_FILE"] = str(pki.ca)  # the worker trusts the mock's CA only

    def mock(port: int) -> list[str]:
        return [sys.executable, "-c", _MOCK, str(port), str(args.words), str(ROOT), *tls]

    async with llmq_stack(
        backend="openai", tenant=True, capacity=args.capacity, mock=mock,
        backend_url=lambda port: f"{scheme}://127.0.0.1:{port}/v1",
        worker_env=mock_env, wrap=_profiled(profiles) if profiles else None,
    ) as stack:  # fmt: skip
        path = "/v1/chat/completions"
        targets = {
            "direct": Target("direct", f"{scheme}://127.0.0.1:{stack.mock_port}{path}"),
            "llmq": Target("llmq", stack.url(path), stack.key, stack.roots()),
        }
        if profiles:  # the python processes themselves (`wrap` keeps their pids)
            targets["llmq"].profiled = [stack.procs[p].pid for p in ("api", "worker")]
        rows = []
        for mode in args.modes:
            for conc in args.concurrency:
                res = {
                    name: await measure(t, mode == "stream", conc, args.seconds, use_wrk, tmp)
                    for name, t in targets.items()
                }
                rows.append((scheme, mode, conc, res))
                print(f"  {scheme} {mode} c={conc} done (load {load_average()})", file=sys.stderr)
        # The other gateways afterwards, one at a time, on the same mock: a proxy (idle or
        # not) never shares the machine with llmq's measured cells.
        if scheme == "http":
            if args.portkey:
                await _measure_proxy(args, rows, *_portkey(args.portkey, stack.mock_port, tmp))
            if args.litellm_python:
                proc, port, master = _litellm(args.litellm_python, stack.mock_port, tmp)
                lite = Target(
                    "litellm", f"http://127.0.0.1:{port}{path}", master, {"proxy": proc.pid}
                )
                await _measure_proxy(args, rows, proc, lite)
        return rows


async def _measure_proxy(
    args: argparse.Namespace, rows: list, proc: subprocess.Popen[bytes], target: Target
) -> None:
    """Every cell of `rows` again against another gateway, then stop it."""
    use_wrk = bool(args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk")))
    tmp = Path(tempfile.mkdtemp(prefix=f"llmq-compare-{target.name}-"))
    try:
        if target.name == "portkey":
            await wait_until_served(target.url.replace("/v1/chat/completions", "/"), "hey", 60)
        else:
            await wait_until_served(
                target.url.replace("/v1/chat/completions", "/v1/models"), '"bench"', timeout=180,
                headers={"authorization": f"Bearer {target.key}"},
            )  # fmt: skip
        for _, mode, conc, res in rows:
            try:
                res[target.name] = await measure(
                    target, mode == "stream", conc, args.seconds, use_wrk, tmp
                )
            except RuntimeError as e:  # e.g. Portkey 1.15 answers 500 to a custom-host stream
                print(f"  {target.name} {mode} c={conc}: {e}", file=sys.stderr)
                res[target.name] = Result(0, 0, 0, 0, {}, load_average())
            print(f"  {target.name} {mode} c={conc} done (load {load_average()})", file=sys.stderr)
    finally:
        stop_all([proc])
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--litellm-python", help="a python with litellm[proxy] installed")
    parser.add_argument("--portkey", help="a folder where `npm install @portkey-ai/gateway` ran")
    parser.add_argument("--seconds", type=float, default=8, help="measured seconds per cell")
    parser.add_argument("--words", type=int, default=17, help="content chunks (+3 SSE events)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--modes", nargs="+", default=["json", "stream"])
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    parser.add_argument(
        "--upstream", nargs="+", choices=["http", "https"], default=["http"],
        help="the mock's scheme; both: one llmq stack each, back to back (LiteLLM: http only)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s per cell, concurrency 32 only"
    )
    parser.add_argument(
        "--profile", type=int, metavar="N", default=0,
        help="run the api and the worker under cProfile and print their top N functions",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.concurrency = 2.0, [32]
    use_wrk = bool(args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk")))
    tmp = Path(tempfile.mkdtemp(prefix="llmq-compare-"))
    profiles = tmp / "profiles" if args.profile else None
    if profiles:
        profiles.mkdir()
    print(
        f"cores={os.cpu_count()} loadgen={'wrk -t1' if use_wrk else 'asyncio'} "
        f"seconds={args.seconds} stream SSE events={args.words + 3} load={load_average()}"
    )
    rows = []
    for scheme in args.upstream:
        rows += await _run_scheme(args, scheme, tmp, use_wrk, profiles)
    print()
    _print_table(rows, args.words)
    if profiles:
        _print_profiles(profiles, args.profile)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    event_loop.run(main())
