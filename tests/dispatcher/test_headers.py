"""The header parser llmq installs on its NATS clients gives nats-py's own result for every
header block, odd ones included, and is what a connected client really uses."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from llmq.dispatcher import headers
from llmq.dispatcher.connection import connect, disconnect
from llmq.dispatcher.headers import parse_header_lines
from tests.stack import unique

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
        subject = "t.headers." + unique("h")
        got: asyncio.Future[dict[str, str] | None] = asyncio.get_running_loop().create_future()

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            if not got.done():
                got.set_result(msg.headers)

        await nc.subscribe(subject, cb=on_msg)
        sent = {"Llmq-Frame": "chunk", "Llmq-Seq": "7", "Utf": "café"}
        await nc.publish(subject, b"x", headers=sent)
        assert await asyncio.wait_for(got, 10) == sent
    finally:
        await disconnect(nc)
