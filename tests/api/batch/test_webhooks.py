"""The webhook sender on a real nats-server, posting to real HTTP receivers on loopback: a
poison message ends at once and blocks nobody, every failure is bounded, the connection goes
to the address that was checked, and a name that now resolves inside is refused."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from llmq.api.batch import stores
from llmq.api.batch.egress import EgressPolicy
from llmq.api.batch.webhooks import Webhooks, sign, verify
from llmq.dispatcher.connection import connect
from llmq.schemas import names
from tests.stack import wait_for


class Receiver:
    """An HTTP endpoint that answers 200 (or `status`) and keeps what it got."""

    def __init__(self, host: str = "127.0.0.1", status: int = 200) -> None:
        self.host, self.port, self.status = host, 0, status
        self.calls: list[tuple[float, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]  # the port the kernel gave it
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.calls.append((time.monotonic(), headers, body))
        writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Jobs:
    """What the sender asks about a job: its URL and body, and where the outcome goes."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.recorded: dict[str, tuple[bool, int]] = {}

    async def render(self, tenant: str, job: str) -> tuple[str, bytes] | None:
        if job == "explodes":
            raise RuntimeError("the record store is broken")
        return self.urls[job], b'{"id": "%s"}' % job.encode()

    async def record(self, tenant: str, job: str, delivered: bool, attempts: int) -> None:
        self.recorded[job] = (delivered, attempts)


async def start_sender(nats_url: str, jobs: Jobs, policy: EgressPolicy, attempts: int = 3):  # type: ignore[no-untyped-def]
    nc = await connect(nats_url, "test")
    js = nc.jetstream()
    await stores.ensure_batch_streams(js, 3600, webhook_attempts=attempts)
    sender = Webhooks(
        js, jobs.render, jobs.record, secret="s", attempts=attempts, timeout=2.0,
        backoff=(0.2,), egress=policy,
    )  # fmt: skip
    sender.start()
    return nc, js, sender


async def settled(js) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(names.WEBHOOKS_STREAM, names.WEBHOOK_CONSUMER)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_a_poison_message_ends_at_once_and_blocks_nobody(own_nats) -> None:  # type: ignore[no-untyped-def]
    receiver = await Receiver().start()
    good = f"http://127.0.0.1:{receiver.port}/hook"
    jobs = Jobs({"poison": "http://[::1/x", "good": good, "refused": "http://10.0.0.1/x"})
    nc, js, sender = await start_sender(own_nats.url, jobs, EgressPolicy(["127.0.0.1/32"]))
    try:
        started = time.monotonic()
        for job in ("poison", "explodes", "refused", "good"):
            await sender.enqueue("acme", job)
        await wait_for(lambda: receiver.calls, timeout=5)
        assert time.monotonic() - started < 5
        await wait_for(lambda: len(jobs.recorded) == 3, timeout=10)
        assert jobs.recorded == {"good": (True, 1), "poison": (False, 1), "refused": (False, 1)}
        # The job whose rendering raises is retried with backoff, then given up.
        await wait_for(lambda: settled(js), timeout=15)
        info = await js.consumer_info(names.WEBHOOKS_STREAM, names.WEBHOOK_CONSUMER)
        assert info.config.max_deliver == 5
        stream = await js.stream_info(names.WEBHOOKS_STREAM)
        assert stream.config.max_age == 3600 and stream.state.messages == 0
        assert len(receiver.calls) == 1 and receiver.calls[0][2] == b'{"id": "good"}'
    finally:
        await sender.stop()
        await nc.close()
        await receiver.stop()


async def test_a_receiver_that_keeps_failing_is_given_up(own_nats) -> None:  # type: ignore[no-untyped-def]
    receiver = await Receiver(status=500).start()
    jobs = Jobs({"j": f"http://127.0.0.1:{receiver.port}/hook"})
    nc, js, sender = await start_sender(own_nats.url, jobs, EgressPolicy(["127.0.0.1/32"]))
    try:
        await sender.enqueue("acme", "j")
        await wait_for(lambda: "j" in jobs.recorded, timeout=10)
        assert jobs.recorded["j"] == (False, 3) and len(receiver.calls) == 3
        await wait_for(lambda: settled(js), timeout=5)
    finally:
        await sender.stop()
        await nc.close()
        await receiver.stop()


async def test_the_connection_goes_to_the_checked_address(own_nats) -> None:  # type: ignore[no-untyped-def]
    """`localhost` resolves to 127.0.0.1 for the system; the policy's resolver says
    127.0.0.2, where the receiver listens: only a pinned connection reaches it."""
    receiver = await Receiver(host="127.0.0.2").start()

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.2"] if host == "localhost" else []

    jobs = Jobs({"pinned": f"http://localhost:{receiver.port}/hook?t=1"})
    policy = EgressPolicy(["127.0.0.2/32"], resolver=resolve)
    nc, _js, sender = await start_sender(own_nats.url, jobs, policy)
    try:
        await sender.enqueue("acme", "pinned")
        await wait_for(lambda: "pinned" in jobs.recorded, timeout=10)
        assert jobs.recorded["pinned"] == (True, 1)
        assert receiver.calls[0][1]["host"] == f"localhost:{receiver.port}"
    finally:
        await sender.stop()
        await nc.close()
        await receiver.stop()


async def test_a_name_that_now_resolves_inside_is_refused_at_delivery(own_nats) -> None:  # type: ignore[no-untyped-def]
    """DNS rebinding: public when the job was submitted, loopback when it is delivered."""
    receiver = await Receiver().start()
    answers = {"hooks.example": ["93.184.216.34"]}

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    policy = EgressPolicy(resolver=resolve)
    url = f"https://hooks.example:{receiver.port}/hook"
    assert (await policy.check(url)).address == "93.184.216.34"  # as at submission
    answers["hooks.example"] = ["127.0.0.1"]
    jobs = Jobs({"rebound": url})
    nc, _js, sender = await start_sender(own_nats.url, jobs, policy)
    try:
        await sender.enqueue("acme", "rebound")
        await wait_for(lambda: "rebound" in jobs.recorded, timeout=10)
        assert jobs.recorded["rebound"] == (False, 1) and receiver.calls == []
    finally:
        await sender.stop()
        await nc.close()
        await receiver.stop()


async def test_an_unbounded_consumer_from_an_older_version_is_bounded(own_nats) -> None:  # type: ignore[no-untyped-def]
    """What a deployment had before: no max_age on the stream, no max_deliver."""
    nc = await connect(own_nats.url, "test")
    js = nc.jetstream()
    try:
        old = StreamConfig(
            name=names.WEBHOOKS_STREAM, subjects=[f"{names.WEBHOOK_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        )  # fmt: skip
        await js.add_stream(old)
        await js.add_consumer(
            names.WEBHOOKS_STREAM,
            ConsumerConfig(
                durable_name=names.WEBHOOK_CONSUMER, name=names.WEBHOOK_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT, max_deliver=-1,
            ),
        )  # fmt: skip
        await stores.ensure_batch_streams(js, 7200, webhook_attempts=4)
        info = await js.consumer_info(names.WEBHOOKS_STREAM, names.WEBHOOK_CONSUMER)
        assert info.config.max_deliver == 6
        stream = await js.stream_info(names.WEBHOOKS_STREAM)
        assert stream.config.max_age == 7200
    finally:
        await nc.close()


def test_webhook_signature() -> None:
    body = b'{"id":"job_1"}'
    header = sign("secret", body, timestamp=1_000)
    assert header.startswith("t=1000,v1=")
    assert verify("secret", header, body, now=1_100)
    assert not verify("secret", header, body + b" ", now=1_100)
    assert not verify("other", header, body, now=1_100)
    assert not verify("secret", header, body, now=2_000)  # too old: replay
    assert not verify("secret", "garbage", body)
