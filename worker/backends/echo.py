"""The built-in `echo` model: replies with the last user message, one token per word.

Deterministic, honours `max_tokens` and `n` (each choice echoes the same words), an optional
per-token delay and reports usage (every choice counted). It is the embedded default that
`llmq dev` serves, and what benchmarks use to measure overhead.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import ClassVar

from llmq.schemas.envelope import JOB_KINDS, JobKind
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Usage,
)
from llmq.schemas.text import count_tokens, message_text, prompt_tokens
from llmq.worker.backends.base import BackendConfig, Call, EchoOptions, Embeddings, Out
from llmq.worker.chunks import ChatChunks, Chunks, TextChunks

EMBEDDING_DIMENSIONS = 16


class EchoBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset(JOB_KINDS) - {"endpoint"}

    def __init__(self, config: BackendConfig) -> None:
        self.delay = config.options_of(EchoOptions).delay

    def chat(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, ChatCompletionRequest)
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = message_text(last_user) if last_user else ""
        n_prompt = prompt_tokens(request.messages)
        return self._words(ChatChunks(call.reply), text, n_prompt, request.token_limit(), call)

    def complete(self, call: Call) -> AsyncIterator[Out]:
        request = call.request
        assert isinstance(request, CompletionRequest)
        prompt = " ".join(
            p if isinstance(p, str) else " ".join(map(str, p)) for p in request.prompts()
        )
        limit = request.max_tokens if isinstance(request.max_tokens, int) else None
        return self._words(TextChunks(call.reply), prompt, count_tokens(prompt), limit, call)

    async def _words(
        self, chunks: Chunks, text: str, n_prompt: int, limit: int | None, call: Call
    ) -> AsyncIterator[Out]:
        """Each of the `n` choices echoes the same words; usage counts them all."""
        words = text.split()
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        choices = call.choices
        n = len(words) * choices
        if call.reply.whole and not self.delay:  # one body in one step: nothing to wait for
            text = " ".join(words)
            for index in range(choices):
                if words:
                    chunks.delta(index, content=text)
                chunks.finish(index, finish)
            last = chunks.end(Usage(n_prompt, n, n_prompt + n), finish)
            last.tokens = bool(words)
            yield last
            return
        for i, word in enumerate(words):
            token = word if i == 0 else " " + word
            if self.delay:
                await asyncio.sleep(self.delay)
            for index in range(choices):
                yield chunks.delta(index, content=token)
        for index in range(choices):
            yield chunks.finish(index, finish)
        yield chunks.end(Usage(n_prompt, n, n_prompt + n), finish)

    async def embed(self, request: EmbeddingRequest, upstream_model: str) -> Embeddings:
        raw = request.input
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        vectors = []
        tokens = 0
        for item in raw:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += count_tokens(text)
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]])
        return Embeddings(vectors=vectors, usage=Usage(tokens, 0, tokens))

    async def probe(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
