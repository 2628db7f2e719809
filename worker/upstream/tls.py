"""TLS for `FastClient`, run in memory over a plain connection (`ssl.MemoryBIO`).

A whole socket read is written into the session and decrypted in one pass (as many `read`s
as it holds TLS records; an SSE stream is one small record per event), straight into the
HTTP parser. Against the event loop's TLS transport (`ssl=` on the connection) it costs
about half the CPU per streamed https call (`bench/upstream_client.py`; figures in
docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import ssl

from llmq.worker.upstream.client import ConnectError, ProtocolError

READ_SIZE = 65536


class TlsSession:
    """One TLS connection's state: handshake, then encrypt what is sent, decrypt what is read."""

    __slots__ = ("_incoming", "_object", "_outgoing", "_read", "closed")

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        # The C object's `read` itself: `SSLObject.read` only forwards to it, one Python
        # call more per TLS record (an SSE stream is one record per event).
        self._read = getattr(self._object, "_sslobj", self._object).read
        self.closed = False
        """The server ended TLS (close_notify): nothing more will come."""

    async def handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Verify the server (certificate, host name) and agree on keys; raises `ssl` errors."""
        while True:
            try:
                self._object.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush(writer)
                data = await reader.read(READ_SIZE)
                if not data:
                    raise ConnectError(
                        "the server closed the connection during the TLS handshake"
                    ) from None
                self._incoming.write(data)
        self.flush(writer)

    def flush(self, writer: asyncio.StreamWriter) -> None:
        """Send what TLS itself has to say (handshake, key updates), if anything."""
        if self._outgoing.pending:
            writer.write(self._outgoing.read())

    def encrypt(self, data: bytes) -> bytes:
        self._object.write(data)
        return self._outgoing.read()

    def decrypt(self, data: bytes) -> bytes | None:
        """The plaintext `data` completes (b"" if none yet); None once the server closed TLS.

        One `read` per TLS record (OpenSSL never returns more than one), and none once the
        incoming buffer is empty: a read that finds nothing raises `SSLWantReadError`, and
        building that exception costs more than decrypting the records themselves
        (`bench/tls_decrypt.py`), so it is only met when a record is still incomplete."""
        incoming = self._incoming
        incoming.write(data)
        read = self._read
        pieces: list[bytes] = []
        try:
            while incoming.pending:
                piece = read(READ_SIZE)
                if not piece:  # close_notify
                    self.closed = True
                    return b"".join(pieces) if pieces else None
                pieces.append(piece)
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLError as exc:
            raise ProtocolError(f"TLS error: {exc.reason or exc}") from None
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)
