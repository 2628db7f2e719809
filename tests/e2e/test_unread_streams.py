"""Streams whose client stops reading (issue 27 point 5). Against real nats-server, Valkey
and echo workers:

- one unread stream: the api holds at most LLMQ_STREAM_BUFFER_BYTES of it, cancels the job,
  books what was generated and frees the tenant's slot while the connection is still open; a
  client that reads on gets what was buffered, an error event and `[DONE]`; one that does not
  has its connection closed after LLMQ_STREAM_DRAIN_TIMEOUT;
- a cut stream ends its response on purpose: its client reads the body cut short, and the
  api logs no "ASGI callable returned without completing response";
- 150 unread streams of about 8 MB each on an api process: its RSS (/proc) stays under
  +300 MB of idle and comes back near idle within 60 s of the clients closing (its freed
  heap returned by the periodic malloc_trim, LLMQ_MALLOC_TRIM_INTERVAL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from llmq.api.tenancy import Quota, Tenant, TenantStore, UsageReader, connect
from tests.stack import free_port, unique, wait_for, wait_serving

CHUNK_BYTES = 190
"""About what one echoed word costs on the wire as an SSE chunk event."""


def _request(port: int, model: str, kb: int, key: str = "") -> bytes:
    words = kb * 1000 // CHUNK_BYTES
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": words,
            "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
        }
    ).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


HEAD_WAIT = 150.0
"""Seconds a request waits for its response head, which comes with its first chunk: beside
two busy loops the echo worker (4 at a time) got through 2-3 of the 150 jobs a second, so
the last head came after 60 s or more; past the api's 120 s deadline it would be a 504."""


async def _open_unread(
    port: int, payload: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A streamed request whose head is read, then nothing: a small receive window (set
    before connecting), so what the client does not read waits in the api."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(payload)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_WAIT)
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(head + await asyncio.wait_for(reader.read(1_000), 10))
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    return reader, writer


async def _read_to_end(reader: asyncio.StreamReader, timeout: float = 30) -> bytes:
    reader._transport.resume_reading()  # type: ignore[attr-defined]
    tail = b""
    async with asyncio.timeout(timeout):
        while data := await reader.read(1 << 16):
            tail = (tail + data)[-2_000:]
            if b"data: [DONE]" in tail:
                break
    return tail


def _beyond_socket_buffers_kb() -> int:
    """A stream larger than every buffer on its way to an unread client: the api's socket
    send buffer grows up to tcp_wmem's maximum (4 MB by default), so a stream smaller than
    that can fit in the kernel whole when the worker is slow (a loaded machine) and never
    fills the api's own buffer."""
    wmem = Path("/proc/sys/net/ipv4/tcp_wmem")
    most = int(wmem.read_text().split()[2]) if wmem.exists() else 4 << 20
    return 2 * most // 1000 + 1_000


async def _ended(port: int) -> dict[str, int]:
    """Chat requests the api has ended, by status (/metrics): 408 for a stream it cut because
    its client did not read."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    ended: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("llmq_api_requests_total{") and 'route="chat"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            ended[status] = ended.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
    return ended


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def test_an_unread_stream_is_cut_booked_and_closed(stack, redis_server) -> None:  # type: ignore[no-untyped-def]
    model = unique("big")
    redis = connect(redis_server.url)
    store = TenantStore(redis)
    tenant = unique("t")
    await store.create(Tenant(name=tenant, max_concurrent=4))
    key, _ = await store.create_key(tenant)
    api = await stack.api(
        auth_mode="keys", key_cache_ttl=0, stream_buffer_bytes=65_536, stream_drain_timeout=4.0
    )
    await stack.worker(model=[model], capacity=4)
    await wait_serving(api.url, model, headers={"authorization": f"Bearer {key}"})
    port = api.settings.api.port
    payload = _request(port, model, _beyond_socket_buffers_kb(), key)
    reads_on, leaves_it = [await _open_unread(port, payload) for _ in range(2)]
    reader = UsageReader(redis)

    async def booked() -> bool:
        entries = await reader.ledger(tenant)
        return len(entries) == 2 and await Quota(redis).inflight(tenant) == 0

    await wait_for(booked, timeout=30)  # while both connections are still open
    # booked once each, with what was generated (by the api's cut, or by the worker's own
    # report when the job had ended before the cancel reached it)
    assert all(entry.completion_tokens > 0 for entry in await reader.ledger(tenant))
    tail = await _read_to_end(reads_on[0])
    assert 0 <= tail.find(b'"code":"stream_not_read"') < tail.find(b"data: [DONE]")
    await asyncio.sleep(5.0)  # past the drain timeout: the api closed the other one
    tail = await _read_to_end(leaves_it[0])
    assert b"[DONE]" not in tail  # cut: it ends without the end of the stream
    for _, writer in (reads_on, leaves_it):
        writer.close()
    await redis.aclose()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_cut_stream_is_ended_on_purpose_not_left_incomplete(stack) -> None:  # type: ignore[no-untyped-def]
    """The cut closes the connection with the body cut short (no `[DONE]`, no end of the
    chunked body: the client must not take it for a whole stream), and uvicorn does not
    report it as an app that returned without completing its response."""
    records = _Records()
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(records)
    try:
        model = unique("big")
        api = await stack.api(stream_buffer_bytes=65_536, stream_drain_timeout=1.0)
        await stack.worker(model=[model], capacity=1)
        await wait_serving(api.url, model)
        port = api.settings.api.port
        reader, writer = await _open_unread(
            port, _request(port, model, _beyond_socket_buffers_kb())
        )

        async def cut() -> bool:
            return "408" in await _ended(port)

        await wait_for(cut, timeout=60)
        await asyncio.sleep(2.0)  # past the drain timeout: the api closed it
        tail = await _read_to_end(reader)
        writer.close()
    finally:
        uvicorn_log.removeHandler(records)
    assert b"[DONE]" not in tail and not tail.endswith(b"0\r\n\r\n")
    assert not [m for m in records.messages if "without completing response" in m]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_150_unread_streams_keep_the_api_process_small_and_it_returns(stack) -> None:  # type: ignore[no-untyped-def]
    model = unique("big")
    port = free_port()
    # freed heap goes back to the system at the next trim (LLMQ_MALLOC_TRIM_INTERVAL, 30 s
    # by default): every 3 s here, so that the wait for it is not most of the test
    api = stack.process("api", "--port", str(port), log_level="WARNING", malloc_trim_interval=3)
    worker = stack.process("worker", "--model", model, "--capacity", "4", "--backend", "echo")
    await wait_serving(f"http://127.0.0.1:{port}", model, timeout=60)
    await asyncio.sleep(2)
    idle = _rss_mb(api.proc.pid)
    payload = _request(port, model, 8_000)
    opened = await asyncio.gather(*(_open_unread(port, payload) for _ in range(150)))
    peak = idle
    measured = time.monotonic()
    deadline = measured + 20
    cut_at = None
    # the echo worker runs 4 at a time: all come through, each cut once its buffer is full;
    # then what the api holds for them stays until they close (measured one more second)
    while time.monotonic() < deadline and (cut_at is None or time.monotonic() < cut_at + 1):
        peak = max(peak, _rss_mb(api.proc.pid))
        await asyncio.sleep(0.5)
        if cut_at is None and sum((await _ended(port)).values()) >= 150:
            cut_at = time.monotonic()
    for _, writer in opened:
        writer.transport.abort()
    closed_at = time.monotonic()

    async def back() -> bool:
        return _rss_mb(api.proc.pid) < idle + 50

    await wait_for(back, timeout=60, interval=1)
    ended = await _ended(port)
    print(
        f"api idle {idle:.0f} MB, peak {peak:.0f} MB with 150 unread streams (ended {ended}, "
        f"measured {closed_at - measured:.1f} s), back to "
        f"{_rss_mb(api.proc.pid):.0f} MB {time.monotonic() - closed_at:.0f} s after the close"
    )
    assert peak < idle + 300
    assert api.proc.poll() is None and worker.proc.poll() is None
    assert b"without completing response" not in api.log_path.read_bytes()  # cut on purpose
