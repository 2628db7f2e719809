"""The chaos suite: faults one at a time under steady traffic, and what each did to it.

The deployment (all real processes on free loopback ports): a 3-node NATS cluster with every
stream, consumer and bucket at R3, Valkey as a master, a replica and three sentinels
(`tests/redis_ha.py`), 2 apis with tenant keys (so every request checks its quota in
Valkey), 3 echo workers answering one token per `--echo-delay` seconds (streams long enough
to be cut). Traffic (bench/chaos_traffic.py): streamed and non-streamed chat through the
official openai SDK over both apis, async jobs, and one batch per fault.

Faults, each after a calm spell and healed before the next: `worker-kill` (kill -9 of a
worker mid-stream), `api-kill` (kill -9 of an api), `nats-leader-kill` (kill -9 of the node
leading LLMQ_JOBS), `valkey-master-kill` (kill -9 of the Valkey master; the sentinels promote
the replica), `worker-stop` (SIGSTOP of a worker: frozen, not dead; SIGCONT after the spell).
For each: requests that hung (must be 0), ended with a clean OpenAI error, were cut (their
connection was to the killed api), succeeded; batch lines lost or doubled (must be 0);
seconds until traffic is normal again (the end of the last request, begun after the fault,
that did not succeed or took over 3x the calm p99).

    .venv/bin/python bench/chaos.py                         # every fault, the full run
    .venv/bin/python bench/chaos.py --faults worker-stop --after 20

tests/e2e/test_chaos.py runs a short form (one node, plain Valkey, two faults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos_ledger import audit as ledger_audit  # noqa: E402
from bench.chaos_traffic import BatchCheck, Outcome, Traffic, run_batch  # noqa: E402
from bench.processes import load_average, spawn, wait_until_served  # noqa: E402
from llmq.embedded import EmbeddedNats, EmbeddedRedis, cluster_url, free_port, nats_cluster  # noqa: E402

FAULTS = ("worker-kill", "api-kill", "nats-leader-kill", "valkey-master-kill", "worker-stop")
MODEL = "chaos-echo"
"""The model of the full run (the short form in the test suite names its own)."""
TIMINGS = {"heartbeat": 2.0, "ping_interval": 1.0, "ack_wait": 4.0, "deadline": 20.0}
"""Production's heartbeat and ping interval (3 s of silence = a lost worker); a short ack
wait, so a job held by a frozen worker goes to another within seconds."""


@dataclass
class Deployment:
    """Every process of the run; `nats_url`/`redis_url` given: use those servers instead of
    starting a cluster and a sentinel set (the short form in the test suite)."""

    root: Path
    apis: int = 2
    workers: int = 3
    capacity: int = 4
    echo_delay: float = 0.03
    nats_url: str = ""
    redis_url: str = ""
    nats_nodes: list[EmbeddedNats] = field(default_factory=list)
    sentinels: Any = None
    api_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_ports: list[int] = field(default_factory=list)
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    model: str = MODEL
    key: str = ""
    _spawned: int = 0

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def env(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "nats_url": self.nats_url, "redis_url": self.redis_url, "auth_mode": "keys",
            "nats_replicas": 3 if self.nats_nodes else 1, "echo_delay": self.echo_delay,
            "key_cache_ttl": 30, "shutdown_grace": 2, **TIMINGS,
        }  # fmt: skip
        return {f"LLMQ_{k.upper()}": str(v) for k, v in values.items()}

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self._spawned += 1
        log = self.root / f"{args[0]}-{self._spawned}.log"
        return spawn([sys.executable, "-m", "llmq.cli", *args], self.env(), log)

    async def start(self) -> None:
        if not self.nats_url:
            self.nats_nodes = nats_cluster(self.root / "nats", size=3)
            self.nats_url = cluster_url(self.nats_nodes)
            await self._jetstream_ready()
        if not self.redis_url:
            from tests.redis_ha import EmbeddedSentinelSet

            self.sentinels = EmbeddedSentinelSet(self.root / "valkey")
            await asyncio.to_thread(self.sentinels.wait_ready)
            self.redis_url = self.sentinels.url
        self.key = await _tenant_key(self.redis_url)
        for _ in range(self.apis):
            self.api_ports.append(free_port())
            self.api_procs.append(self._spawn(["api", "--port", str(self.api_ports[-1])]))
        for _ in range(self.workers):
            self.start_worker()
        await self.wait_serving()

    async def _jetstream_ready(self, timeout: float = 60) -> None:
        """Until the cluster has a meta leader and takes an R3 stream (the apis start after)."""
        import nats

        from llmq.dispatcher import streams

        nc = await nats.connect(servers=self.nats_url.split(","))
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    await streams.ensure_streams(nc.jetstream(), 900, replicas=3)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def logs(self, tail: int = 2000) -> str:
        """The end of every process's log (printed when something does not come up)."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}"
            for log in sorted(self.root.glob("*.log"))
        )

    def start_worker(self) -> None:
        args = ["worker", "--model", self.model, "--capacity", str(self.capacity)]
        self.worker_procs.append(self._spawn(args))

    def restart_api(self, index: int) -> None:
        self.api_procs[index] = self._spawn(["api", "--port", str(self.api_ports[index])])

    async def wait_serving(self, timeout: float = 90) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        try:
            for url in self.api_urls:
                await wait_until_served(f"{url}/v1/models", self.model, timeout, headers)
        except RuntimeError:
            print(self.logs(), file=sys.stderr)
            raise

    async def jobs_leader(self) -> EmbeddedNats:
        """The cluster node that leads LLMQ_JOBS now."""
        import nats

        from llmq.schemas import names

        nc = await nats.connect(servers=self.nats_url.split(","), connect_timeout=2)
        try:
            info = await nc.jetstream().stream_info(names.JOBS_STREAM)
        finally:
            await nc.close()
        return next(n for n in self.nats_nodes if n.server_name == info.cluster.leader)

    def stop(self) -> None:
        for proc in [*self.api_procs, *self.worker_procs]:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in [*self.api_procs, *self.worker_procs]:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.sentinels is not None:
            self.sentinels.stop()
        for node in self.nats_nodes:
            node.stop()


async def _tenant_key(redis_url: str) -> str:
    """A tenant with room for the whole run, and a key of it."""
    from llmq.api.tenancy import Tenant, TenantStore, connect

    redis = connect(redis_url)
    try:
        store = TenantStore(redis)
        name = f"chaos-{os.getpid()}-{time.time_ns() % 10**6}"
        await store.create(Tenant(name=name, rpm=1_000_000, max_concurrent=1000))
        key, _ = await store.create_key(name, label="chaos")
        return key
    finally:
        await redis.aclose()


async def inflict(dep: Deployment, fault: str) -> Any:
    """Apply `fault`; returns what `heal` needs to undo it."""
    if fault == "worker-kill":
        victim = dep.worker_procs.pop(0)
        victim.send_signal(signal.SIGKILL)
        return victim
    if fault == "worker-stop":
        victim = dep.worker_procs[0]
        victim.send_signal(signal.SIGSTOP)
        return victim
    if fault == "api-kill":
        dep.api_procs[0].send_signal(signal.SIGKILL)
        return 0
    if fault == "nats-leader-kill":
        node = await dep.jobs_leader()
        node.kill()
        return node
    if fault == "valkey-master-kill":
        master: EmbeddedRedis = dep.sentinels.master
        master.kill()
        return master
    raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")


async def heal(dep: Deployment, fault: str, undo: Any) -> None:
    """Put the deployment back to full strength (a new worker, the api or node restarted)."""
    if fault == "worker-kill":
        undo.wait(5)
        dep.start_worker()
    elif fault == "worker-stop":
        undo.send_signal(signal.SIGCONT)
    elif fault == "api-kill":
        dep.api_procs[0].wait(5)
        dep.restart_api(undo)
    elif fault == "nats-leader-kill":
        await asyncio.to_thread(undo.restart)
    elif fault == "valkey-master-kill":
        pass  # the promoted replica serves alone from here on
    await dep.wait_serving()


@dataclass
class FaultRow:
    fault: str
    requests: int
    ok: int
    errors: int
    cut: int
    hung: int
    wrong: int
    normal_after: float
    slowest: float
    """Seconds the longest of these requests took (a frozen worker's jobs wait its ack)."""
    batch: BatchCheck
    notes: dict[str, int]

    @property
    def success(self) -> float:
        return 100.0 * self.ok / max(self.requests, 1)


def tally(
    fault: str, outcomes: list[Outcome], at: float, until: float, batch: BatchCheck
) -> FaultRow:
    """The requests open at the fault or begun within the spell after it."""
    calm = sorted(o.ended - o.started for o in outcomes if o.ended < at and o.result == "ok")
    p99 = calm[int(len(calm) * 0.99)] if calm else 1.0
    hit = [o for o in outcomes if o.ended >= at and o.started < until]
    slow = max(3 * p99, 1.0)
    bad = [o for o in hit if o.result != "ok" or o.ended - o.started > slow]
    notes: dict[str, int] = {}
    for o in hit:
        if o.result != "ok":
            what = f"{o.kind} {o.result} {o.detail}".strip()
            notes[what] = notes.get(what, 0) + 1
    count = {
        r: sum(1 for o in hit if o.result == r) for r in ("ok", "error", "cut", "hung", "wrong")
    }
    return FaultRow(
        fault, len(hit), count["ok"], count["error"], count["cut"], count["hung"], count["wrong"],
        max((o.ended for o in bad), default=at) - at,
        max((o.ended - o.started for o in hit), default=0.0), batch, notes,
    )  # fmt: skip


async def run(
    dep: Deployment, faults: list[str], calm: float, after: float, lanes: int, batch_lines: int
) -> list[FaultRow]:
    """Steady traffic; per fault: `calm` seconds, the fault, `after` seconds, heal."""
    traffic = Traffic(dep.api_urls, dep.key, dep.model, lanes=lanes)
    traffic.start()
    rows = []
    try:
        for fault in faults:
            await asyncio.sleep(calm)
            batch = asyncio.create_task(
                run_batch(dep.api_urls, dep.key, dep.model, batch_lines, timeout=after + 90)
            )
            await asyncio.sleep(0.5)
            at = time.monotonic()
            undo = await inflict(dep, fault)
            await asyncio.sleep(after)
            until = time.monotonic()
            await heal(dep, fault, undo)
            checked = await batch
            await asyncio.sleep(1.0)  # requests begun before `until` end (or hang) by now
            await _wait_ended(traffic, until, 60)
            rows.append(tally(fault, traffic.outcomes, at, until, checked))
            print(format_row(rows[-1]), json.dumps(rows[-1].notes), flush=True)
    finally:
        await traffic.stop()
    return rows


async def _wait_ended(traffic: Traffic, until: float, timeout: float) -> None:
    """Until every lane has recorded a request begun after `until` (so none before is open)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = [o for o in traffic.outcomes if o.started >= until and o.kind != "job"]
        if len(recent) >= traffic.lanes:
            return
        await asyncio.sleep(0.2)


HEADER = (
    "| fault | requests | succeeded | clean error | cut (killed api) | hung | success % "
    "| batch lines ok/err | lost | doubled | normal after (s) | slowest (s) |"
)


def format_row(row: FaultRow) -> str:
    b = row.batch
    return (
        f"| {row.fault} | {row.requests} | {row.ok} | {row.errors} | {row.cut} "
        f"| {row.hung + row.wrong} | {row.success:.1f} | {b.ok}/{b.errors} ({b.status}) "
        f"| {b.lost} | {b.doubled} | {row.normal_after:.1f} | {row.slowest:.1f} |"
    )


def table(rows: list[FaultRow]) -> str:
    lines = [HEADER, "|" + "---|" * 12, *(format_row(r) for r in rows), ""]
    lines += [f"- {r.fault}: {json.dumps(r.notes)}" for r in rows if r.notes]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--calm", type=float, default=6.0, help="seconds before each fault")
    parser.add_argument("--after", type=float, default=20.0, help="seconds measured after it")
    parser.add_argument("--lanes", type=int, default=10, help="concurrent chat requests")
    parser.add_argument("--batch-lines", type=int, default=40)
    parser.add_argument("--echo-delay", type=float, default=0.03, help="seconds per token")
    parser.add_argument("--keep", default="", help="keep the logs and data in this directory")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="llmq-chaos-") as tmp:
        root = Path(args.keep or tmp)
        os.makedirs(root, exist_ok=True)
        dep = Deployment(root, echo_delay=args.echo_delay)
        try:
            await dep.start()
            print(f"deployment up: {dep.api_urls}, load {load_average()}")
            rows = await run(dep, faults, args.calm, args.after, args.lanes, args.batch_lines)
            print("ledger audit:", json.dumps(await ledger_audit(dep.redis_url, dep.key)))
        finally:
            dep.stop()
    print()
    print(table(rows))


if __name__ == "__main__":
    asyncio.run(main())
