"""The lean client's https cost, the old decrypt against the current one, in one
process: `TlsSession.decrypt` as it was (`SSLObject.read` until `SSLWantReadError`, one
such exception per socket read) against the current one (the C object's `read`, none once
the incoming buffer is empty), and plain http as the floor. One streamed call of 20 SSE
events to `bench/mock_upstream.py` (its own processes, http and https with a throwaway CA);
the three alternate in rounds, CPU µs per call of this process, median round.

    PYTHONPATH=$PWD .venv/bin/python bench/tls_decrypt.py [--calls 200] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import spawn, stop_all  # noqa: E402
from bench.upstream_client import WORDS, _free_port, _ours, _wait_listening  # noqa: E402
from llmq import event_loop  # noqa: E402
from llmq.worker.upstream import tls  # noqa: E402
from llmq.worker.upstream.client import ProtocolError  # noqa: E402
from llmq.worker.upstream.fast_client import FastClient  # noqa: E402
from tests.worker.upstream.pki import make_pki  # noqa: E402


def decrypt_before(self: tls.TlsSession, data: bytes) -> bytes | None:
    """`TlsSession.decrypt` as it was written first (one copy per record), kept here to compare."""
    self._incoming.write(data)
    pieces: list[bytes] = []
    while True:
        try:
            piece = self._object.read(tls.READ_SIZE)
        except ssl.SSLWantReadError:
            break
        except ssl.SSLError as exc:
            raise ProtocolError(f"TLS error: {exc.reason or exc}") from None
        if not piece:
            self.closed = True
            return b"".join(pieces) if pieces else None
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    decrypt_after = tls.TlsSession.decrypt
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        pki = make_pki(tmp)
        http_port, https_port = _free_port(), _free_port()
        mock = [sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
        words = ["--words", str(WORDS)]
        procs = [
            spawn([*mock, str(http_port), *words], {}, tmp / "http.log"),
            spawn(
                [*mock, str(https_port), *words, "--certfile", str(pki.cert),
                 "--keyfile", str(pki.key)], {}, tmp / "https.log",
            ),
        ]  # fmt: skip
        try:
            await _wait_listening(http_port)
            await _wait_listening(https_port)
            client = FastClient({"user-agent": "llmq-bench"}, 5.0, tls=pki.client_context())
            call = _ours(client)
            path = "/v1/chat/completions"
            http, https = (
                f"http://127.0.0.1:{http_port}{path}",
                f"https://127.0.0.1:{https_port}{path}",
            )
            ways = {"http": (http, decrypt_after), "https, before": (https, decrypt_before),
                    "https, after": (https, decrypt_after)}  # fmt: skip
            for url, _ in ways.values():
                for _ in range(50):
                    assert await call(url) == 20
            samples: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, (url, decrypt) in ways.items():
                    tls.TlsSession.decrypt = decrypt  # type: ignore[method-assign]
                    started = time.process_time()
                    for _ in range(args.calls):
                        await call(url)
                    samples[name].append((time.process_time() - started) / args.calls * 1e6)
            tls.TlsSession.decrypt = decrypt_after  # type: ignore[method-assign]
            await client.aclose()
        finally:
            stop_all(procs)
    floor = statistics.median(samples["http"])
    print(f"{args.calls} calls x {args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    print("| client | CPU µs per streamed call | / http |")
    print("|---|---|---|")
    for name, values in samples.items():
        cpu = statistics.median(values)
        print(f"| {name} | {cpu:,.0f} | {cpu / floor:.2f} |")


if __name__ == "__main__":
    event_loop.run(main())
