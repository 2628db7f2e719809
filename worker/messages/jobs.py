"""Which way a `message` job runs on this worker: through to its Anthropic upstream, or on
its chat backend (translated); `count_tokens` on a chat backend is llmq's estimate."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from llmq.schemas.envelope import JobEnvelope
from llmq.schemas.frames import Done
from llmq.schemas.messages import count_request_decoder, estimate_tokens
from llmq.schemas.openai import Usage
from llmq.worker.backends.base import Backend, BackendConfig
from llmq.worker.messages.adapter import run_message
from llmq.worker.messages.passthrough import MessagesPassthrough
from llmq.worker.replies import FrameSender
from llmq.worker.responses_api.adapter import Started

_encoder = msgspec.json.Encoder()


class MessageJobs:
    def __init__(
        self, backend: Backend, upstream_names: Mapping[str, str], config: BackendConfig
    ) -> None:
        self.backend = backend
        self.upstream_names = upstream_names
        self.passthrough = MessagesPassthrough(config) if config.kind == "anthropic" else None

    async def run(
        self, body: bytes, job: JobEnvelope, sender: FrameSender, started: Started
    ) -> Usage:
        """Serve one job; answers its usage (none for `count_tokens`)."""
        if self.passthrough is not None:
            names = self.upstream_names
            return await self.passthrough.run(names, body, job, sender, started=started)
        if job.message_op == "count_tokens":
            counted = estimate_tokens(count_request_decoder.decode(body))
            answer = msgspec.Raw(_encoder.encode({"input_tokens": counted}))
            await sender.done(Done(usage=Usage(), finish_reason="estimate", body=answer))
            return Usage()
        args = (self.backend, self.upstream_names, body, job, sender)
        return await run_message(*args, started=started)

    async def aclose(self) -> None:
        if self.passthrough is not None:
            await self.passthrough.aclose()
