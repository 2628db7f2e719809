"""`tls.TlsSession.decrypt` against a real TLS server object (OpenSSL on both ends, in
memory): records whole, split across reads, many per read, and the server's close_notify."""

from __future__ import annotations

import ssl

import pytest

from llmq.worker.upstream.tls import TlsSession
from tests.worker.upstream.pki import Pki


class _Server:
    """The server end over its own memory buffers; `send` returns the TLS records."""

    def __init__(self, pki: Pki) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = pki.server_context().wrap_bio(self.incoming, self.outgoing, server_side=True)

    def send(self, plain: bytes) -> bytes:
        self.obj.write(plain)
        return self.outgoing.read()


def _connected(pki: Pki) -> tuple[TlsSession, _Server]:
    session, server = TlsSession(pki.client_context(), "localhost"), _Server(pki)
    for _ in range(10):  # handshake, bytes handed across by hand
        try:
            session._object.do_handshake()
        except ssl.SSLWantReadError:
            pass
        server.incoming.write(session._outgoing.read())
        try:
            server.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if server.outgoing.pending:
            assert session.decrypt(server.outgoing.read()) in (b"", None)
    assert session._object.version() is not None
    return session, server


def test_many_records_in_one_read_come_out_whole(pki: Pki) -> None:
    session, server = _connected(pki)
    events = [b'data: {"n": %d}\n\n' % i for i in range(20)]
    wire = b"".join(server.send(e) for e in events)  # 20 records, one per event
    assert session.decrypt(wire) == b"".join(events)
    assert not session.closed


def test_a_record_split_across_reads_waits_for_its_rest(pki: Pki) -> None:
    session, server = _connected(pki)
    first, second = server.send(b"one"), server.send(b"two")
    wire = first + second
    cut = len(first) + 5  # the second record's header only
    assert session.decrypt(wire[:cut]) == b"one"
    assert session.decrypt(wire[cut:-1]) == b""
    assert session.decrypt(wire[-1:]) == b"two"


def test_close_notify_ends_the_session(pki: Pki) -> None:
    session, server = _connected(pki)
    last = server.send(b"last")
    with pytest.raises(ssl.SSLWantReadError):
        server.obj.unwrap()  # sends close_notify, waits for the client's
    assert session.decrypt(last + server.outgoing.read()) == b"last"
    assert session.closed


def test_a_tampered_record_is_a_protocol_error(pki: Pki) -> None:
    from llmq.worker.upstream.client import ProtocolError

    session, server = _connected(pki)
    wire = bytearray(server.send(b"secret"))
    wire[-1] ^= 0xFF
    with pytest.raises(ProtocolError, match="TLS error"):
        session.decrypt(bytes(wire))
