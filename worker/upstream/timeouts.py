"""The deadlines of one upstream call: connect, first token, between tokens, total.

The client bounds only the connect (`Timeouts.connect`, so that its failure is known to be
retry-safe); every read is bounded by `Clock.deadline()` with asyncio, and a missed
deadline becomes a 504 that says which bound was passed.
"""

from __future__ import annotations

import asyncio

from llmq.worker.backends.base import BackendError, Timeouts


class Clock:
    """The deadline of the next read: first token, then between tokens, never past total."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.end = now + timeouts.total
        self._next = now + timeouts.first_token
        self.started = False
        """A token went to the caller: from now on nothing is retryable."""

    def deadline(self) -> float:
        return min(self._next, self.end)

    def tick(self) -> None:
        """A token was handed over: the between-tokens bound starts again."""
        self._next = self._loop.time() + self.timeouts.between_tokens

    def expired(self) -> BackendError:
        t = self.timeouts
        if self._loop.time() >= self.end - 0.001:
            what = f"the call took longer than {t.total:g}s"
        elif not self.started:
            what = f"no first token within {t.first_token:g}s"
        else:
            what = f"no token for {t.between_tokens:g}s"
        return BackendError(
            f"upstream timed out: {what}", status=504, type="timeout", code="upstream_timeout"
        )
