"""`llmq top`: `llmq status` refreshed live, through NATS outages: while the connection is
down it says since when (figures from before would pretend nothing runs), and it shows the
live numbers again as soon as NATS is back."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from nats.aio.client import Client

from llmq import snapshot
from llmq.dispatcher.queue_estimate import QueueEstimator
from llmq.ops_cli import (
    CLEAR,
    WIDTH,
    dump,
    nats_command,
    print_lines,
    queue_waits,
    render_status,
    run_with_nats,
    status_json,
)
from llmq.snapshot import Snapshot
from llmq.tables import ago

T = TypeVar("T")


def cmd_top(args: argparse.Namespace) -> int:
    async def body(nc: Client, url: str) -> int:
        js = nc.jetstream()
        tty = sys.stdout.isatty() and not args.json
        latest: list[Snapshot] = []
        estimator = QueueEstimator(js, lambda: [w.info for w in latest[-1].workers])
        outage = Outage()
        n = 0
        while not args.iterations or n < args.iterations:
            started = time.monotonic()
            failed = ""
            if not outage.seen(nc.is_connected):
                try:
                    look = _look(nc, args.timeout, estimator, latest)
                    waits = await _while_connected(nc, look)
                except Exception as exc:  # NATS went away meanwhile, or too slow
                    failed = f"! no snapshot: {exc or type(exc).__name__}"
                    outage.seen(nc.is_connected, since=time.time() - (time.monotonic() - started))
            if failed and outage.since is None:
                lines = [dump({"nats_url": url, "error": failed})] if args.json else [failed]
            elif outage.since is not None:
                lines = [dump(outage.json(url))] if args.json else outage.lines(url)
            elif args.json:
                lines = [dump(status_json(latest[0], url, waits))]
            else:
                lines = render_status(latest[0], url, waits)
            if args.json:
                print_lines(lines)
            else:
                _print_top(lines, tty, n, args.interval)
            n += 1
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        return 0

    return run_with_nats(args, body)


async def _look(
    nc: Client, timeout: float, estimator: QueueEstimator, latest: list[Snapshot]
) -> dict[str, float | None]:
    """One refresh of `llmq top`: the snapshot, kept in `latest` (also the estimator's view
    of the workers), and the queue waits. The api replicas the last refresh saw are waited
    for (the first refresh waits `timeout` for them)."""
    apis = [api.id for api in latest[0].apis] if latest else None
    snap = await snapshot.snapshot(nc, nc.jetstream(), timeout, apis=apis)
    latest[:] = [snap]
    return await queue_waits(nc.jetstream(), snap, estimator)


async def _while_connected(nc: Client, look: Awaitable[T]) -> T:
    """`look`, given up as soon as the connection drops (its requests would otherwise each
    wait for their timeout)."""
    task = asyncio.ensure_future(look)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if not nc.is_connected:
                raise ConnectionError("NATS disconnected")
    finally:
        task.cancel()


class Outage:
    """`llmq top` while NATS is away: since when, shown instead of figures that would
    pretend nothing runs."""

    def __init__(self) -> None:
        self.since: float | None = None

    def seen(self, connected: bool, since: float | None = None) -> bool:
        """Note the connection's state (`since`: when it was last seen up); True while
        disconnected."""
        if connected:
            self.since = None
        elif self.since is None:
            self.since = since or time.time()
        return not connected

    def json(self, url: str) -> dict[str, Any]:
        return {"nats_url": url, "connected": False, "disconnected_since": self.since}

    def lines(self, url: str) -> list[str]:
        since = self.since or time.time()
        when = time.strftime("%H:%M:%S UTC", time.gmtime(since))
        return [
            f"llmq at {url}",
            f"disconnected since {when} ({ago(time.time() - since)} ago); reconnecting to NATS",
        ]


def _print_top(body: list[str], tty: bool, n: int, interval: float) -> None:
    width = shutil.get_terminal_size((WIDTH, 24)).columns
    lines = [f"llmq top  every {interval:g}s  Ctrl-C quits", *body]
    sys.stdout.write(CLEAR if tty else ("\n" if n else ""))
    print_lines([line[:width] for line in lines])


def register(sub: Any) -> None:
    top = nats_command(sub, "top", "`llmq status`, refreshed live")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=0, help="stop after N refreshes")
    top.set_defaults(handler=cmd_top)
