"""The built-in `echo` model: replies with the last user message, one token per word.

Deterministic, honours `max_tokens`, an optional per-token delay and reports usage. It is
the embedded default that `llmq dev` serves, and what benchmarks use to measure overhead.
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
from llmq.worker.backends.base import BackendConfig, EchoOptions, Embeddings, Piece

EMBEDDING_DIMENSIONS = 16


class EchoBackend:
    kinds: ClassVar[frozenset[JobKind]] = frozenset(JOB_KINDS)

    def __init__(self, config: BackendConfig) -> None:
        self.delay = config.options_of(EchoOptions).delay

    def chat(self, request: ChatCompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = message_text(last_user) if last_user else ""
        return self._words(text, prompt_tokens(request.messages), request.token_limit())

    def complete(self, request: CompletionRequest, upstream_model: str) -> AsyncIterator[Piece]:
        prompt = request.prompt if isinstance(request.prompt, str) else " ".join(request.prompt)
        limit = request.max_tokens if isinstance(request.max_tokens, int) else None
        return self._words(prompt, count_tokens(prompt), limit)

    async def _words(self, text: str, n_prompt: int, limit: int | None) -> AsyncIterator[Piece]:
        words = text.split()
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        for i, word in enumerate(words):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield Piece(content=word if i == 0 else " " + word)
        n = len(words)
        yield Piece(finish_reason=finish, usage=Usage(n_prompt, n, n_prompt + n))

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
