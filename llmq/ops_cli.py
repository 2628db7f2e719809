"""`llmq status | top | workers | jobs`: what the cluster is doing, read from NATS directly.

No api is needed: the commands read the worker registry and model catalog (KV), the
per-model consumers (queue depth, unacked jobs), and ask the `llmq-worker` and `llmq-api`
micro services for their counters and running jobs. Every command takes `--nats-url`
(default: LLMQ_NATS_URL) and `--json`; tables fit an 80-column terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from llmq import event_loop, job_list, snapshot
from llmq.dispatcher.batch.records import split_line_job_id
from llmq.dispatcher.queue_estimate import QueueEstimator
from llmq.job_list import JobView
from llmq.snapshot import Snapshot, WorkerView
from llmq.tables import Column, ago, table

WIDTH = 80
CONNECT_TIMEOUT = 2.0
CLEAR = "\x1b[H\x1b[2J"

# --- tables ---------------------------------------------------------------------------------


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


MODEL_COLUMNS: list[Column] = [
    ("MODEL", 21, "<"),
    ("WORKERS", 7, ">"),
    ("IN-FLIGHT", 9, ">"),
    ("CAPACITY", 8, ">"),
    ("QUEUED", 7, ">"),
    ("UNACKED", 7, ">"),
    ("PULLS", 6, ">"),
    ("WAIT", 6, ">"),
]
WORKER_COLUMNS: list[Column] = [
    ("WORKER", 20, "<"),
    ("BACKEND", 7, "<"),
    ("MODELS", 14, "<"),
    ("SLOTS", 5, ">"),
    ("STATE", 12, "<"),
    ("JOBS", 6, ">"),
    ("ERRS", 5, ">"),
    ("SEEN", 4, ">"),
]
API_COLUMNS: list[Column] = [
    ("API", 12, "<"),
    ("HOST", 28, "<"),
    ("PORT", 6, ">"),
    ("STREAMS", 8, ">"),
    ("STATE", 10, "<"),
]
JOB_COLUMNS: list[Column] = [
    ("JOB", 12, "<"),
    ("MODEL", 15, "<"),
    ("STATE", 9, "<"),
    ("TENANT", 12, "<"),
    ("AGE", 6, ">"),
    ("DEADLINE", 8, ">"),
    ("WORKER", 12, "<"),
]


def worker_rows(workers: Sequence[WorkerView]) -> list[list[object]]:
    return [
        [
            w.info.id,
            w.info.backend,
            ",".join(w.info.models),
            f"{w.info.in_flight}/{w.info.capacity}",
            w.state,
            _count(w.jobs),
            _count(w.errors),
            ago(w.seen_ago),
        ]
        for w in workers
    ]


def _wait(waits: dict[str, float | None], model: str) -> str:
    """The estimated queue wait of a model: `0s`, `12.5s`, `?` while no rate is known."""
    if model not in waits:
        return "-"
    wait = waits[model]
    return "?" if wait is None else f"{wait:.1f}s" if wait else "0s"


async def queue_waits(
    js: JetStreamContext, snap: Snapshot, estimator: QueueEstimator | None = None
) -> dict[str, float | None]:
    """Each model's estimated queue wait, as the api's admission sees it
    (dispatcher/queue_estimate.py). One look shows `0` or, for a backlog, unknown; an
    `estimator` kept across calls (`llmq top`) measures the backlog's rate."""
    if estimator is None:
        estimator = QueueEstimator(js, lambda: [w.info for w in snap.workers])
    try:
        await estimator.refresh()
    except Exception as exc:  # the queue figures are also missing from the snapshot then
        snap.errors.append(f"queue estimate unavailable: {exc}")
    return {model: state.wait for model, state in estimator.models.items()}


def render_status(
    snap: Snapshot, url: str, waits: dict[str, float | None] | None = None
) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap.taken_at))
    draining = sum(1 for w in snap.workers if w.info.draining)
    queued = sum(m.queued for m in snap.models)
    in_flight = sum(w.info.in_flight for w in snap.workers)
    capacity = sum(w.info.capacity for w in snap.workers if not w.info.draining)
    lines = [
        f"llmq at {url}  {when}",
        f"apis {len(snap.apis)}  workers {len(snap.workers)}"
        + (f" ({draining} draining)" if draining else "")
        + f"  models {len(snap.models)}  queued {queued}  in flight {in_flight}/{capacity}",
        "",
    ]
    model_rows = [
        [
            m.name,
            m.workers,
            m.in_flight,
            m.capacity,
            m.queued,
            m.unacked,
            m.waiting,
            _wait(waits or {}, m.name),
        ]
        for m in snap.models
    ]
    lines += table(MODEL_COLUMNS, model_rows) if model_rows else ["no models yet"]
    lines.append("")
    lines += table(WORKER_COLUMNS, worker_rows(snap.workers)) if snap.workers else ["no workers"]
    lines += unanswered_lines(snap)
    lines.append("")
    api_rows = [
        [
            a.instance or a.id,
            a.host,
            a.port,
            a.open_streams,
            "accepting" if a.accepting else "draining",
        ]
        for a in snap.apis
    ]
    lines += table(API_COLUMNS, api_rows) if api_rows else ["no api replicas answered"]
    lines += [f"! {error}" for error in snap.errors]
    return lines


def unanswered_lines(snap: Snapshot) -> list[str]:
    """The note under a workers table naming the registered workers whose STATS did not
    come within the timeout (their JOBS and ERRS show `-`)."""
    if not snap.unanswered:
        return []
    names = ", ".join(snap.unanswered)
    return [f"! no reply within {snap.waited:g}s from {len(snap.unanswered)} worker(s): {names}"]


def short_job_id(job_id: str, width: int) -> str:
    """A job id cut to `width`, told apart from its neighbours: a batch line's id is its
    batch's hex and line number (`<batch hex>-<n>`), whose first 12 digits are the batch's
    creation time, so it shows as the random rest of the batch id and the line number."""
    line = split_line_job_id(job_id)
    if line is None:
        return job_id[:width]
    batch_hex, number = line
    suffix = f"-{number}"
    return batch_hex[12:][: max(1, width - len(suffix))] + suffix


def render_jobs(jobs: Sequence[JobView], wide: bool) -> list[str]:
    if not jobs:
        return ["no jobs running or queued"]
    columns = list(JOB_COLUMNS)
    if wide:
        columns[0] = ("JOB", 0, "<")  # the whole id, however long
    id_width = columns[0][1]
    rows = [
        [
            j.job_id if wide else short_job_id(j.job_id, id_width),
            j.model,
            j.state,
            j.tenant,
            ago(j.age),
            "-" if j.deadline_in is None else ago(max(0.0, j.deadline_in)),
            j.worker or "-",
        ]
        for j in jobs
    ]
    return table(columns, rows)


# --- JSON ------------------------------------------------------------------------------------


def status_json(
    snap: Snapshot, url: str, waits: dict[str, float | None] | None = None
) -> dict[str, Any]:
    return {
        "queue_waits": waits or {},
        "nats_url": url,
        "taken_at": snap.taken_at,
        "apis": msgspec.to_builtins(snap.apis),
        "workers": [worker_json(w) for w in snap.workers],
        "models": msgspec.to_builtins(snap.models),
        "queues": msgspec.to_builtins(snap.queues),
        "errors": snap.errors,
        "unanswered": snap.unanswered,
    }


def worker_json(w: WorkerView) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.structs.asdict(w.info)
    out.update(
        state=w.state,
        jobs=w.jobs,
        errors=w.errors,
        in_flight_by_model=w.in_flight_by_model,
        seen_ago=round(w.seen_ago, 3),
        answered=w.jobs is not None,
    )
    return out


def dump(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# --- commands --------------------------------------------------------------------------------


def _url(args: argparse.Namespace) -> str:
    if args.nats_url:
        return str(args.nats_url)
    from llmq.schemas.settings import Settings

    return Settings().connection.nats_url


def run_with_nats(args: argparse.Namespace, body: Callable[[Client, str], Awaitable[int]]) -> int:
    """Connect as every llmq process does (LLMQ_NATS_* credentials and TLS, from the
    environment or files only), run `body`, close. The URL shown never carries userinfo."""
    from llmq.dispatcher.connection import connect, has_password, redact_url

    url = _url(args)
    shown = redact_url(url)
    if args.nats_url and has_password(args.nats_url):
        print(
            "llmq: no credentials in --nats-url (a command line shows in `ps`); use "
            "LLMQ_NATS_USER/LLMQ_NATS_PASSWORD(_FILE), LLMQ_NATS_TOKEN(_FILE), "
            "LLMQ_NATS_NKEY or LLMQ_NATS_CREDS",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        # Kept trying with backoff (each retry logged to stderr, with the URL) for `--wait`
        # seconds, `llmq top` for ever; reconnecting once connected (a NATS restart).
        wait: float | None = getattr(args, "wait", None)
        deadline = None if wait is None else time.monotonic() + wait
        try:
            nc = await connect(url, "llmq-cli", CONNECT_TIMEOUT, reconnect=True, deadline=deadline)
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            print(f"llmq: cannot reach NATS at {shown}: {detail}", file=sys.stderr)
            return 1
        try:
            return await body(nc, shown)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    try:
        return event_loop.run(main())
    except KeyboardInterrupt:
        return 0


def print_lines(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def cmd_status(args: argparse.Namespace) -> int:
    async def body(nc: Client, url: str) -> int:
        js = nc.jetstream()
        snap = await snapshot.snapshot(nc, js, args.timeout)
        waits = await queue_waits(js, snap)
        print_lines(
            [dump(status_json(snap, url, waits))] if args.json else render_status(snap, url, waits)
        )
        return 0

    return run_with_nats(args, body)


def cmd_workers(args: argparse.Namespace) -> int:
    async def body(nc: Client, url: str) -> int:
        snap = await snapshot.snapshot(nc, nc.jetstream(), args.timeout, apis=())
        for error in snap.errors:
            print(f"llmq: {error}", file=sys.stderr)
        if args.json:
            print_lines([dump([worker_json(w) for w in snap.workers])])
        elif snap.workers:
            print_lines(table(WORKER_COLUMNS, worker_rows(snap.workers)) + unanswered_lines(snap))
        else:
            print_lines(["no workers"])
        return 0

    return run_with_nats(args, body)


def cmd_jobs(args: argparse.Namespace) -> int:
    async def body(nc: Client, url: str) -> int:
        jobs = await job_list.list_jobs(nc, nc.jetstream(), args.limit, args.model, args.timeout)
        if args.json:
            print_lines([dump(msgspec.to_builtins(jobs))])
        else:
            print_lines(render_jobs(jobs, args.wide))
        return 0

    return run_with_nats(args, body)


def nats_command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand reading NATS: `--nats-url`, `--json`, `--timeout`."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    p.add_argument("--nats-url", default=None, help="NATS server(s) (env LLMQ_NATS_URL)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds at most to wait for the micro service replies: every worker the "
        "registry knows alive, or the output names those that did not answer",
    )
    return p


def register(sub: Any) -> None:
    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        return nats_command(sub, name, help_text)

    def waiting(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--wait",
            type=float,
            default=10.0,
            help="seconds to keep trying NATS while it is unreachable",
        )
        return p

    status = waiting(parser("status", "workers, models, queue depth, in-flight and capacity, apis"))
    status.set_defaults(handler=cmd_status)

    workers = waiting(
        parser("workers", "live workers: backend, models, slots, circuit, jobs, errors")
    )
    workers.set_defaults(handler=cmd_workers)

    jobs = waiting(
        parser("jobs", "running jobs (from the workers), then queued ones (from JetStream)")
    )
    jobs.add_argument("--model", default=None, help="only this model")
    jobs.add_argument("--limit", type=int, default=50, help="most queued jobs listed")
    jobs.add_argument("--wide", action="store_true", help="full job ids")
    jobs.set_defaults(handler=cmd_jobs)
