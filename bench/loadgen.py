"""The load generators of `bench/compare.py`: wrk with one thread (a Lua script posts the same
body and prints a JSON summary), or, without wrk, keep-alive asyncio connections."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    profiled: list[int] = field(default_factory=list)
    """Processes run by `bench/profiled.py`: profiled during each measured run."""
    headers: dict[str, str] = field(default_factory=dict)
    """More request headers (Portkey's provider and upstream host)."""


def _body(stream: bool) -> str:
    body: dict[str, object] = {
        "model": "bench",
        "messages": [{"role": "user", "content": "hello from the mock"}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


async def wrk(target: Target, stream: bool, conc: int, seconds: float, tmp: Path) -> dict:
    auth = f'wrk.headers["Authorization"] = "Bearer {target.key}"' if target.key else ""
    auth += "".join(f'\nwrk.headers["{k}"] = "{v}"' for k, v in target.headers.items())
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


async def asyncio_load(target: Target, stream: bool, conc: int, seconds: float) -> dict:
    """The fallback generator (no wrk): `conc` keep-alive connections, each sending its next
    request when the last one's answer has been read whole."""
    from urllib.parse import urlsplit

    url = urlsplit(target.url)
    payload = _body(stream).encode()
    auth = f"Authorization: Bearer {target.key}\r\n" if target.key else ""
    auth += "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
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
