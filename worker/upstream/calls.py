"""One backend's upstream calls: a streamed POST read into `Out`s, a JSON POST, a probe.

`Upstream` owns the client (chosen by `choice`) and puts every call under a `Clock`; every
failure leaves as a `BackendError` (`error_mapping`). Protocol specifics live in small
synchronous `StreamParser`s, one per backend module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Protocol

import msgspec

from llmq.worker.backends.base import BackendConfig, BackendError, Out
from llmq.worker.upstream.choice import open_client
from llmq.worker.upstream.client import LineBatches, Params, StatusError, TransportError
from llmq.worker.upstream.error_mapping import error_from_status, malformed, transport_error
from llmq.worker.upstream.timeouts import Clock

DRAIN_SECONDS = 1.0
"""How long a finished stream's remaining body is read before the connection is dropped."""


class StreamParser(Protocol):
    """Turns an upstream's response lines into outs; knows when the stream is complete."""

    done: bool
    """Set once the terminal event was read; the rest of the body is not read."""

    def feed(self, line: str) -> list[Out]:
        """One line of the body (without its line break)."""
        ...

    def eof(self) -> list[Out]:
        """The body ended: the final out, or raise `ended_early()` if it is incomplete."""
        ...


def base_url(config: BackendConfig, default: str) -> str:
    return (config.url or default).rstrip("/")


@contextmanager
def upstream_errors(clock: Clock) -> Iterator[None]:
    """Every failure as a BackendError; nothing is retryable once a token was yielded."""
    try:
        yield
    except BackendError as error:
        if clock.started:
            error.retryable = False
        raise
    except TimeoutError:
        raise clock.expired() from None
    except StatusError as error:
        raise error_from_status(error) from None
    except TransportError as error:
        raise transport_error(error, retryable=not clock.started) from None
    except msgspec.DecodeError as exc:
        raise malformed(str(exc)) from None


class Upstream:
    """One backend's HTTP side: a pooled client and the three kinds of call backends make."""

    def __init__(self, config: BackendConfig, auth_headers: dict[str, str], base: str = "") -> None:
        self.timeouts = config.timeouts
        headers = {"user-agent": "llmq-worker", **auth_headers}
        headers.update((name.lower(), value) for name, value in config.headers.items())
        self.client = open_client(
            base or config.url,
            headers,
            config.timeouts.connect,
            config.http_client,
        )

    def __repr__(self) -> str:
        return f"Upstream(timeouts={self.timeouts!r})"

    async def stream(
        self,
        url: str,
        body: Callable[[], bytes],
        parser: StreamParser,
        params: Params = None,
    ) -> AsyncIterator[Out]:
        """POST and yield outs as the parser finds them.

        `body` is built lazily so that a request the backend cannot translate fails while
        iterating, like every other error. The response is closed on every exit, including
        cancellation of the consuming task, which ends the upstream generation.
        """
        clock = Clock(self.timeouts)
        with upstream_errors(clock):
            content = body()
            async with AsyncExitStack() as stack:
                async with asyncio.timeout_at(clock.deadline()):
                    batches = await stack.enter_async_context(
                        self.client.stream(url, content, params)
                    )
                stack.push_async_callback(batches.aclose)
                while not parser.done:
                    # One deadline per read from the socket, not per line: a read brings
                    # every line that has arrived.
                    async with asyncio.timeout_at(clock.deadline()):
                        batch = await anext(batches, None)
                    if batch is None:
                        for out in parser.eof():
                            yield out
                        break
                    for line in batch:
                        outs = parser.feed(line)
                        if parser.done:
                            await _drain(batches, clock)
                        tokens = False
                        for out in outs:
                            if out.tokens:
                                tokens = clock.started = True
                            yield out
                        if tokens:
                            clock.tick()
                        if parser.done:
                            break

    async def post(self, url: str, body: Callable[[], bytes], params: Params = None) -> bytes:
        """POST and return the whole JSON body (embeddings), within the total timeout."""
        clock = Clock(self.timeouts)
        with upstream_errors(clock):
            content = body()
            async with asyncio.timeout_at(clock.end):
                return await self.client.post(url, content, params)

    async def probe(self, url: str, params: Params = None) -> bool:
        """True when the server answers at all below 500 (a 401 or 404 still proves it is up)."""
        try:
            async with asyncio.timeout(min(self.timeouts.first_token, self.timeouts.total)):
                status = await self.client.status(url, params)
        except (TransportError, TimeoutError):
            return False
        return status < 500

    async def aclose(self) -> None:
        await self.client.aclose()


async def _drain(lines: LineBatches, clock: Clock) -> None:
    """Read the rest of a complete answer (normally just the chunked-body terminator) so that
    the connection goes back to the pool instead of being closed."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TransportError, TimeoutError):
        async with asyncio.timeout_at(min(clock.deadline(), loop.time() + DRAIN_SECONDS)):
            async for _ in lines:
                pass
