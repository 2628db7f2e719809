"""What translating costs one streamed `/v1/messages` job on a chat backend, in process and
without the network: the worker's CPU for the same echo reply as a chat job (the runner's
stream loop) and as a Messages job (`worker/messages/adapter.run_message`: the request
to chat, each chunk folded into events), and the api's for writing the job's frames (chat:
`data:` lines; Messages: named events, `api/messages/relay.sse_events`). Each the fastest
of `--rounds` rounds of `--n` jobs: steady on a loaded machine, where bench/messages.py's
end-to-end figures move by more than the difference.

    .venv/bin/python bench/messages_translation.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmq.api.messages.relay import sse_events  # noqa: E402
from llmq.schemas.envelope import JobEnvelope  # noqa: E402
from llmq.schemas.frames import Done, join_chunks  # noqa: E402
from llmq.schemas.openai import ChatCompletionRequest, Usage  # noqa: E402
from llmq.worker.backends.base import BackendConfig, Call, Out, ReplyTo  # noqa: E402
from llmq.worker.backends.echo import EchoBackend  # noqa: E402
from llmq.worker.messages.adapter import run_message  # noqa: E402
from llmq.worker.replies import drive  # noqa: E402

TEXT = "hello from the bench"
MESSAGES = {"model": "bench", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": TEXT}]}  # fmt: skip
CHAT = {**MESSAGES, "stream_options": {"include_usage": True}}
_chat = msgspec.json.Decoder(ChatCompletionRequest)


class Frames:
    """Stands for the worker's `FrameSender`: keeps the chunk frames it would publish."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def chunks(self, batch: list[bytes]) -> None:
        self.frames.append(join_chunks(batch))

    async def done(self, frame: Done) -> None:
        msgspec.json.encode(frame)


async def chat_job(backend: EchoBackend, body: bytes, frames: Frames) -> None:
    """A streamed chat job as the runner serves it: decode, the backend's chunks sent
    whenever it would wait, then `done`."""
    chat = _chat.decode(body)
    reply = ReplyTo("chatcmpl-bench", chat.model, int(time.time()), True)
    ready: list[bytes] = []
    usage = Usage()

    async def take(out: Out) -> None:
        nonlocal usage
        if out.chunk:
            ready.append(out.chunk)
        if out.usage is not None:
            usage = out.usage

    async def flush() -> None:
        if ready:
            batch = ready.copy()
            ready.clear()
            await frames.chunks(batch)

    await drive(backend.chat(Call.of(chat, chat.model, reply, body)), take, flush)
    await frames.done(Done(usage=usage, finish_reason="stop"))


async def fastest(
    job: Callable[[], Awaitable[Frames]], n: int, rounds: int
) -> tuple[float, Frames]:
    """µs per call of the fastest round, and the last call's frames."""
    best, frames = float("inf"), Frames()
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            frames = await job()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best, frames


def relay_cost(write: Callable[[bytes], object], frames: list[bytes], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            for frame in frames:
                write(frame)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    backend = EchoBackend(BackendConfig())
    chat_body, messages_body = msgspec.json.encode(CHAT), msgspec.json.encode(MESSAGES)
    job = JobEnvelope(id="bench", model="bench", kind="message")

    async def chat() -> Frames:
        frames = Frames()
        await chat_job(backend, chat_body, frames)
        return frames

    async def started(_streams: bool) -> None:
        return None

    async def messages() -> Frames:
        frames = Frames()
        await run_message(backend, {}, messages_body, job, frames, started=started)  # type: ignore[arg-type]
        return frames

    worker_chat, chat_frames = await fastest(chat, args.n, args.rounds)
    worker_messages, messages_frames = await fastest(messages, args.n, args.rounds)
    api_chat = relay_cost(
        lambda f: b"data: " + f + b"\n\n", chat_frames.frames, args.n, args.rounds
    )
    api_messages = relay_cost(sse_events, messages_frames.frames, args.n, args.rounds)
    print(f"{'µs per streamed echo job':<26}{'chat':>8}{'messages':>10}{'added':>8}")
    for name, c, m in (("worker (translation)", worker_chat, worker_messages),
                       ("api (SSE writing)", api_chat, api_messages)):  # fmt: skip
        print(f"{name:<26}{c:>8.1f}{m:>10.1f}{m - c:>+8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
