"""Many concurrent open streams on one api and one worker: memory per stream, and no error.

The worker runs the echo backend at one token a second (`LLMQ_ECHO_DELAY=1`), so every
stream stays open for `--tokens` seconds. The client opens `--streams` streamed chat
requests (raw keep-alive sockets, `--ramp` new ones at a time), waits until every one has
had its first chunk, reads the api's and the worker's RSS (/proc) while all are open, then
reads every stream to `data: [DONE]` and checks each got all its chunks. RSS per stream is
(RSS with all open - RSS before) / streams open at that moment, after a warm-up round of 200
streams; `--tokens` must outlast the ramp, or early streams end before the last one opens.

    PYTHONPATH=$PWD .venv/bin/python bench/open_streams.py --streams 10000

`--profile N`: the api and the worker run under cProfile (CPU time, `bench/profiled.py`)
while the streams are open, and their top N functions are printed. When any stream fails,
the processes' logs (nats-server's slow-consumer notices among them) are copied to a folder
the script names, and nats-server's warnings are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pstats
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, llmq_stack, load_average, rss_kib  # noqa: E402
from llmq import event_loop  # noqa: E402


class Stream:
    """One streamed request on its own connection, read as it comes."""

    def __init__(self, port: int, words: int) -> None:
        body = json.dumps(
            {
                "model": "bench",
                "stream": True,
                "messages": [{"role": "user", "content": " ".join(["tok"] * words)}],
            }
        ).encode()
        self.request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.port = port
        self.first = asyncio.get_running_loop().create_future()
        self.chunks = 0
        self.done = False
        self.error = ""

    async def run(self) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            buffer = b""
            while not self.done:
                data = await reader.read(65536)
                if not data:
                    raise RuntimeError("closed before [DONE]")
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for ev in events:
                    line = ev[ev.find(b"data: ") :]  # chunked framing before it, if any
                    if line == b"data: [DONE]":
                        self.done = True
                    elif line.startswith(b'data: {"error"'):
                        raise RuntimeError(line.decode()[:200])
                    elif line.startswith(b"data: "):
                        self.chunks += 1
                        if not self.first.done():
                            self.first.set_result(None)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if not self.first.done():
                self.first.set_result(None)
            if writer is not None:
                writer.close()


async def _open(
    port: int, n: int, words: int, ramp: int
) -> tuple[list[Stream], list[asyncio.Task]]:
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, n, ramp):
        batch = [Stream(port, words) for _ in range(min(ramp, n - start))]
        streams += batch
        tasks += [asyncio.create_task(s.run()) for s in batch]
        await asyncio.gather(*(s.first for s in batch))
    return streams, tasks


def _check(streams: list[Stream], words: int) -> list[str]:
    errors = [s.error for s in streams if s.error]
    short = [s.chunks for s in streams if not s.error and (not s.done or s.chunks < words)]
    return errors + [f"{len(short)} streams short of {words} chunks"] * bool(short)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument(
        "--tokens", type=int, default=300,
        help="seconds each stream lasts: longer than opening them all takes",
    )  # fmt: skip
    parser.add_argument("--ramp", type=int, default=500, help="streams opened at a time")
    parser.add_argument(
        "--profile", type=int, metavar="N", default=0,
        help="run the api and the worker under cProfile and print their top N functions",
    )  # fmt: skip
    parser.add_argument(
        "--gc-watch", action="store_true",
        help="print the api's and the worker's garbage-collector pauses of 50 ms or more",
    )  # fmt: skip
    parser.add_argument(
        "--gc-threshold", metavar="A,B,C",
        help="with --gc-watch: the api's and the worker's collector thresholds (an experiment)",
    )  # fmt: skip
    args = parser.parse_args()
    profiles = Path(tempfile.mkdtemp(prefix="open-streams-prof-")) if args.profile else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.streams + 1000)), hard))
    env = {"LLMQ_ECHO_DELAY": "1"}
    if args.gc_threshold:
        env["GC_THRESHOLD"] = args.gc_threshold
    wrap = _profiled(profiles) if profiles else None
    if args.gc_watch:
        wrap = _gc_watched
    async with llmq_stack(capacity=args.streams + 100, env=env, wrap=wrap) as stack:
        roots = stack.roots()
        warm, warm_tasks = await _open(stack.api_port, 200, 3, 200)
        await asyncio.gather(*warm_tasks)
        assert not _check(warm, 3), _check(warm, 3)
        await asyncio.sleep(1)
        profiled = [stack.procs[p].pid for p in ("api", "worker")] if profiles else []
        for pid in profiled:
            os.kill(pid, signal.SIGUSR1)
        before = {p: rss_kib([pid]) for p, pid in roots.items()}
        cpu0 = {p: cpu_seconds([pid]) for p, pid in roots.items()}
        started = time.monotonic()
        streams, tasks = await _open(stack.api_port, args.streams, args.tokens, args.ramp)
        opened = time.monotonic() - started
        during = {p: rss_kib([pid]) for p, pid in roots.items()}
        open_now = sum(1 for s in streams if not s.done and not s.error)
        load = load_average()
        await asyncio.gather(*tasks)
        took = time.monotonic() - started
        cpu = {p: (cpu_seconds([pid]) - cpu0[p]) / args.streams * 1e6 for p, pid in roots.items()}
        for pid in profiled:
            os.kill(pid, signal.SIGUSR2)
        problems = _check(streams, args.tokens)
        if problems:
            _keep_logs(stack.tmp)
        if args.gc_watch:
            _print_gc_pauses(stack.tmp)
        if profiles:
            await _written(profiles, len(profiled))
    print(
        f"{args.streams} streams of {args.tokens} tokens (1 per second), all open after "
        f"{opened:.1f} s, all done after {took:.1f} s, load {load}; open when RSS was read: "
        f"{open_now} (per stream figures divide by this)"
    )
    print(
        "| process | RSS before MiB | RSS all open MiB | KiB per open stream | CPU µs per stream |"
    )
    print("|---|---|---|---|---|")
    for part in roots:
        per = (during[part] - before[part]) / max(1, open_now)
        print(
            f"| {part} | {before[part] / 1024:,.1f} | {during[part] / 1024:,.1f} | {per:,.1f} "
            f"| {cpu[part]:,.0f} |"
        )
    done = sum(1 for s in streams if s.done and not s.error)
    print(f"completed: {done} of {args.streams}; errors: {len(problems)}")
    for problem in sorted(set(problems))[:10]:
        print("  ", problem)
    if profiles:
        _print_profiles(profiles, args.profile)


def _profiled(folder: Path) -> Callable[[str], list[str]]:
    """The api's and the worker's python under cProfile (CPU time), output in `folder`."""

    def wrap(part: str) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "profiled.py"), str(folder / f"{part}.prof")]

    return wrap


async def _written(folder: Path, count: int) -> None:
    """Wait (bounded) until the profiled processes wrote their stats."""
    for _ in range(100):
        if _count(folder) >= count:
            await asyncio.sleep(0.5)  # let the last write finish
            return
        await asyncio.sleep(0.1)


def _gc_watched(part: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "gc_watched.py")]


def _print_gc_pauses(tmp: Path) -> None:
    for part in ("api", "worker"):
        lines = (tmp / f"{part}.log").read_text(errors="replace").splitlines()
        pauses = [line for line in lines if line.startswith("gc-pause")]
        longest = sorted(pauses, key=lambda line: -int(line.split("ms=")[1].split()[0]))
        print(f"{part}: {len(pauses)} gc pauses >= 50 ms; longest: {longest[:5]}")


def _count(folder: Path) -> int:
    return len(list(folder.glob("*.prof")))


def _print_profiles(folder: Path, top: int) -> None:
    for prof in sorted(folder.glob("*.prof")):
        out = io.StringIO()
        pstats.Stats(str(prof), stream=out).sort_stats("tottime").print_stats(top)
        print(f"\n### {prof.stem}: top {top} functions by own CPU time\n")
        text = out.getvalue()
        print(text[text.find("   ncalls") :].rstrip())


def _keep_logs(tmp: Path) -> None:
    """Copy the run's logs somewhere that outlives the stack, and show nats-server's warnings."""
    kept = Path(tempfile.mkdtemp(prefix="open-streams-logs-"))
    for log in tmp.rglob("*.log"):
        shutil.copy(log, kept / log.name)
    print(f"logs kept in {kept}")
    for log in kept.glob("nats*.log"):
        warnings = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "[WRN]" in line or "[ERR]" in line
        ]
        for line in warnings[:10]:
            print("  nats:", line)
        if len(warnings) > 10:
            print(f"  nats: ... {len(warnings) - 10} more warnings")


if __name__ == "__main__":
    event_loop.run(main())
