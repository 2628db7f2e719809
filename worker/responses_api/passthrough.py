"""Passing a Responses job through to an upstream that serves `/v1/responses` itself
(`LLMQ_RESPONSES_PASSTHROUGH`, openai backend only).

The upstream gets the request as the api queued it, with only what must change: its own
model name, `stream` on (a whole response is the terminal event's), `store` off and no
`previous_response_id` / `conversation` / `background` (llmq keeps the history, the
storage and the queue; the api has already put the history into `input`). Its events go
to the client byte for byte, except the few that carry the whole Response, whose ids and
llmq-owned fields are put back to what the client asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from llmq.schemas.frames import Done
from llmq.schemas.openai import Usage
from llmq.schemas.settings import Settings
from llmq.worker.backends.base import BackendConfig, BackendError, Out
from llmq.worker.replies import FrameSender
from llmq.worker.responses_api.adapter import Started, read_request
from llmq.worker.upstream.calls import Upstream, base_url
from llmq.worker.upstream.error_mapping import ended_early, malformed

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_OURS = ("previous_response_id", "conversation", "background", "store")
_LIFECYCLE = frozenset(("response.created", "response.queued", "response.in_progress"))
"""Events that say the response exists, not that it advanced: the first-token deadline
still runs through them. Every other event (an output item, a part, a delta, a done)
is output on its way, so it restarts the between-tokens bound like a token does."""
_WAITING = Out()
_PROGRESS = Out(tokens=True)


def passthrough_of(settings: Settings, config: BackendConfig) -> ResponsesPassthrough | None:
    """The pass-through when this worker's openai upstream serves `/v1/responses`."""
    if config.kind != "openai" or not settings.backend.openai.responses_passthrough:
        return None
    return ResponsesPassthrough(config)


class _Events:
    """A StreamParser that keeps each SSE event's JSON and is done at the terminal event;
    the pieces it answers only pace the upstream clock (one per event): an event that
    carries output counts as a token, so a long pass-through is bounded like any stream
    (first token, then between tokens), not cut at the first-token deadline."""

    def __init__(self) -> None:
        self.done = False
        self.events: list[dict[str, Any]] = []

    def feed(self, line: str) -> list[Out]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            event = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise malformed(str(exc)) from None
        kind = event.get("type")
        self.done = kind in _TERMINAL
        self.events.append(event)
        return [_WAITING if kind in _LIFECYCLE else _PROGRESS]

    def eof(self) -> list[Out]:
        if not self.done:
            raise ended_early()
        return []


class ResponsesPassthrough:
    def __init__(self, config: BackendConfig) -> None:
        self._base = base_url(config, "https://api.openai.com/v1")
        auth = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._upstream = Upstream(config, auth, self._base)

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def _events(self, body: bytes) -> AsyncIterator[dict[str, Any]]:
        parser = _Events()
        url = f"{self._base}/responses"
        async for _ in self._upstream.stream(url, lambda: body, parser):
            while parser.events:
                yield parser.events.pop(0)

    async def run(
        self,
        upstream_names: Mapping[str, str],
        body: bytes,
        job_id: str,
        sender: FrameSender,
        started: Started,
    ) -> Usage:
        request = read_request(body)
        public = request["model"]
        stream = bool(request.get("stream"))
        forwarded = {k: v for k, v in request.items() if k not in _OURS}
        forwarded |= {"model": upstream_names.get(public, public), "stream": True, "store": False}
        ours = {k: request.get(k) for k in _OURS} | {"model": public, "id": f"resp_{job_id}"}
        if isinstance(ours["conversation"], str):
            ours["conversation"] = {"id": ours["conversation"]}
        ours["background"] = bool(ours["background"])
        ours["store"] = ours["store"] is not False
        final: dict[str, Any] | None = None
        begun = False
        async for event in self._events(_encoder.encode(forwarded)):
            if event.get("type") == "error":
                raise BackendError(
                    str(event.get("message") or "the upstream failed"),
                    status=502,
                    code=str(event.get("code") or "upstream_error"),
                )
            response = event.get("response")
            if isinstance(response, dict):
                response |= {k: v for k, v in ours.items() if v is not None or k in response}
                if event.get("type") in _TERMINAL:
                    final = response
            if not begun:
                begun = True
                await started(stream)
            if stream:
                await sender.chunk(_encoder.encode(event))
        if final is None:
            raise ended_early()
        usage = _usage(final.get("usage"))
        await sender.done(
            Done(usage=usage, finish_reason=None, body=msgspec.Raw(_encoder.encode(final)))
        )
        return usage


def _usage(raw: Any) -> Usage:
    raw = raw if isinstance(raw, dict) else {}
    prompt, completion = int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0)
    return Usage(prompt, completion, int(raw.get("total_tokens") or prompt + completion))
