"""The header parser and encoder llmq installs on its NATS clients give nats-py's own result
for every header block and every header dict, odd ones included, and are what a connected
client really uses."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from llmq._fast import nats as headers
from llmq._fast.nats import encode_headers, parse_header_lines
from llmq.dispatcher.connection import connect, disconnect
from tests.stack import unique

pytestmark = pytest.mark.usefixtures("fast_paths_on")  # compared with nats-py itself

nats_py = Client._parse_header_lines
"""nats-py's own parser (llmq replaces it per client, never on the class)."""

ODD_BLOCKS = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"Llmq-Frame: chunk\r\nLlmq-Seq: 3\r\n\r\n",
    b"Name:Value\r\n",  # no space after the colon
    b"Name:\tValue \t\r\n",
    b"Na me: spaced name\r\nGood: yes\r\n",  # whitespace inside a name: skipped
    b"\x1cName: separator inside\r\n",  # str.isspace() is true for 0x1c-0x1f
    b"Sep\x1f: x\r\n",
    b" Padded \t: v\r\n",
    b"Caf\xc3\xa9: non-ascii name\r\nOk: 1\r\n",  # non-ASCII name: skipped
    b"Bad: \xff\xfe value\r\n",  # non-UTF-8 value: replaced
    b"Utf: caf\xc3\xa9\r\n",
    b": empty name\r\n",
    b"no colon at all\r\nA: 1\r\n",
    b"Dup: 1\r\nDup: 2\r\n",  # the last one wins
    b"Colons: a:b:c\r\n",
    b"Lone\rCR: x\r\nLone\nLF: y\r\n",
    b" 503\r\n\r\n",  # what is left of a status line
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"Status: 100\r\nDescription: Idle Heartbeat\r\nNats-Last-Consumer: 7\r\n\r\n",
    b"X" * 300 + b": long name\r\n",
]


def test_odd_blocks_parse_as_nats_py_does() -> None:
    for raw in ODD_BLOCKS * 2:  # the second round reads names from the memo
        assert parse_header_lines(raw) == nats_py(raw), raw


_piece = st.sampled_from(
    [b"Llmq-Seq", b"Nats-Msg-Id", b"Status", b":", b": ", b" ", b"\t", b"\r\n", b"\r", b"\n",
     b"\x1c", b"\x1f", b"\x0b", b"\xc3\xa9", b"\xff", b"a", b"Z", b"-", b"0"]
)  # fmt: skip
_line = st.tuples(
    st.binary(max_size=12), st.sampled_from([b":", b": ", b":\t"]), st.binary(max_size=16)
).map(b"".join)
_blocks = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(_piece, st.binary(max_size=8)), max_size=40).map(b"".join),
    st.lists(_line, max_size=8).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n"),
)


@settings(max_examples=600, deadline=None)
@given(_blocks)
def test_any_block_parses_as_nats_py_does(raw: bytes) -> None:
    assert parse_header_lines(raw) == nats_py(raw)
    assert parse_header_lines(raw) == nats_py(raw)  # again, with the names remembered


def test_the_memo_of_names_stays_bounded() -> None:
    for i in range(headers._MAX_NAMES + 50):
        raw = f"Name-{i}: v\r\n".encode() + b"Y" * 500 + b": big\r\n"
        assert parse_header_lines(raw) == nats_py(raw)
    assert len(headers._names) <= headers._MAX_NAMES
    assert all(len(name) <= headers._MAX_NAME_BYTES for name in headers._names)


async def test_connected_clients_parse_with_it(nats_server) -> None:  # type: ignore[no-untyped-def]
    nc = await connect(nats_server.url, "test-headers")
    try:
        assert nc._parse_header_lines is parse_header_lines
        assert nc._send_publish.__func__ is headers._send_publish  # type: ignore[attr-defined]
        subject = "t.headers." + unique("h")
        got: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            if not got.done():
                got.set_result(msg.headers)

        await nc.subscribe(subject, cb=on_msg)
        sent = {"Llmq-Frame": "chunk", "Llmq-Seq": "7", "Utf": "café", "Sp": " line\r\nbreak "}
        await nc.publish(subject, b"x", headers=sent)
        assert await asyncio.wait_for(got, 10) == {**sent, "Sp": "line  break"}
    finally:
        await disconnect(nc)


async def _published(nc: Client, block: dict[str, Any] | None) -> tuple[object, bytes, dict]:  # type: ignore[type-arg]
    """What one publish appends to the client's outgoing buffer (or the error it raises)."""
    nc._pending = []
    try:
        await nc._send_publish("llmq.t", "_INBOX.r", b"body", 4, block)
    except Exception as exc:
        return (type(exc), str(exc)), b"", {}
    return None, b"".join(nc._pending), dict(nc.stats)


async def _same_as_nats_py(block: dict[str, Any] | None) -> None:
    ours = Client()
    assert headers.install(ours)
    theirs = Client()
    assert await _published(ours, block) == await _published(theirs, block)


ODD_DICTS: list[dict[str, Any] | None] = [
    None,
    {},
    {"Llmq-Frame": "accepted", "Llmq-Seq": "0", "Llmq-Worker": "w-1"},
    {" Padded ": "  value  "},
    {"": "empty name is left out", "A": "1"},
    {"   ": "blank name too"},
    {"Bad Name": "space inside: nats-py refuses it"},
    {"Bad:Colon": "x"},
    {"Café": "non-ascii name"},
    {"V": "line\r\nbreak\rand\nmore"},
    {"V": "café ü"},
    {"V": "cr\ronly", "W": "lf\nonly"},
    {"V": ""},
    {"V": 5},  # not a str: the same error
]


async def test_odd_dicts_encode_as_nats_py_does() -> None:
    for value in ODD_DICTS * 2:  # the second round reads names from the memo
        await _same_as_nats_py(value)


_text = st.one_of(
    st.text(st.sampled_from("aZ0-_.: \t\r\n\x0béü!~()"), max_size=12),
    st.sampled_from(["Llmq-Seq", "Llmq-Frame", "Nats-Msg-Id"]),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_text, _text, max_size=6))
async def test_any_dict_encodes_as_nats_py_does(value: dict[str, str]) -> None:
    await _same_as_nats_py(value)
    await _same_as_nats_py(value)


def test_the_encoded_block_is_nats_py_s() -> None:
    block = encode_headers({"Llmq-Frame": "chunk", "Llmq-Seq": "3"})
    assert bytes(block) == b"NATS/1.0\r\nLlmq-Frame: chunk\r\nLlmq-Seq: 3\r\n\r\n"


async def test_a_round_trip_that_times_out_leaves_the_client_reading(nats_server) -> None:  # type: ignore[no-untyped-def]
    """nats-py 2.16's `flush` cancels its PONG future when its timeout passes, and the PONG
    that comes later stops the client's read loop (connected, and deaf). `round_trip` gives
    up waiting without cancelling: the PONG that comes later is harmless."""
    nc = await connect(nats_server.url, "round-trip")
    sender = await connect(nats_server.url, "round-trip-sender")
    subject = unique("rt")
    got: list[bytes] = []

    async def received(msg: Any) -> None:
        got.append(msg.data)

    await nc.subscribe(subject, cb=received)
    await nc.flush()
    try:
        for _ in range(2_000):  # 20 MB queued for `nc`: its PONG comes after them
            await sender.publish(subject, b"y" * 10_000)
        # nats-py writes a flush's PING ahead of what it still buffers: flushed until the
        # buffer is empty, then once more, NATS holds it all for `nc`
        async with asyncio.timeout(60):
            while sender.pending_data_size:
                await sender.flush()
            await sender.flush()
        assert await headers.round_trip(nc, 0.001) is False
        for _ in range(1_000):
            if len(got) == 2_000:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the late PONG has been read by now
        await sender.publish(subject, b"after")
        async with asyncio.timeout(60):
            while sender.pending_data_size:
                await sender.flush()
            await sender.flush()
        assert await headers.round_trip(nc, 10.0) is True
        assert got[-1] == b"after" and len(got) == 2_001
        assert not nc._reading_task.done()  # type: ignore[union-attr]
    finally:
        await disconnect(sender)
        await disconnect(nc)


async def test_a_round_trip_comes_back_after_every_publish_made_before_it(nats_server) -> None:  # type: ignore[no-untyped-def]
    """nats-py 2.16's `flush` writes its PING straight to the socket, ahead of the publishes
    still in its pending buffer: its PONG can come before the server read them. `round_trip`
    sends the PING behind them, so once it returns the server has every one, and a
    subscriber's own round trip on another connection finds them all delivered. (The sender
    keeps up to 64 MB pending, not nats-py's 2 MB, so that a whole round waits in the
    buffer: on nats-py's order the PONG then beats most of it every time.)"""
    sender = await nats.connect(nats_server.url, name="rt-order-sender", pending_size=64 << 20)
    receiver = await connect(nats_server.url, "rt-order-receiver")
    subject = unique("order")
    got = [0]

    def route(msg: Any) -> None:
        got[0] += 1

    await headers.subscribe_direct(receiver, subject, route)  # counted in the read loop
    assert await headers.round_trip(receiver, 10.0)
    payload = b"z" * 500_000
    try:
        for n in range(1, 6):
            for _ in range(40):  # 20 MB, all in the sender's pending buffer
                await sender.publish(subject, payload)
            assert await headers.round_trip(sender, 60.0)
            assert await headers.round_trip(receiver, 60.0)
            assert got[0] == 40 * n
    finally:
        await sender.close()
        await disconnect(receiver)
