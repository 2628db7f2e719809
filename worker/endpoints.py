"""Serving `endpoint` jobs (`schemas.endpoints`): OpenAI's other endpoints on an `openai`
worker's upstream, request bytes and answer bytes passed through as they are.

Only the paths the worker declares (`LLMQ_OPENAI_ENDPOINTS`) are served. A JSON body gets
the upstream's own model name; a multipart body travels untouched. The upstream's answer
is relayed as it arrives (binary audio, streamed speech): first its status and content
type, then its bytes. Usage is the upstream's `usage` when a JSON answer has one (chat-style
`prompt_tokens` or Responses-style `input_tokens`), else zero: such requests are counted per
request. An upstream error (4xx/5xx) fails the job with its message, as for chat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import msgspec

from llmq.schemas.endpoints import ENDPOINT_PATHS, EndpointHead, encode_head, unpack
from llmq.schemas.frames import Done
from llmq.schemas.openai import Usage
from llmq.schemas.settings import Settings
from llmq.worker.backends.base import BackendConfig, BackendError
from llmq.worker.replies import FrameSender
from llmq.worker.upstream.calls import base_url
from llmq.worker.upstream.error_mapping import error_fields

_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
PIECE = 64 * 1024
"""Largest chunk frame of relayed bytes."""
USAGE_SCAN = 4 * 1024 * 1024
"""A JSON answer up to this size is read for its `usage`."""

Started = Callable[[bool], Awaitable[None]]


def endpoints_of(settings: Settings, config: BackendConfig) -> EndpointUpstream | None:
    """The endpoint relay when this worker's openai upstream serves any of them."""
    declared = settings.backend.openai.openai_endpoints
    unknown = set(declared) - set(ENDPOINT_PATHS)
    if unknown:
        raise ValueError(f"LLMQ_OPENAI_ENDPOINTS: unknown endpoints {sorted(unknown)}")
    if config.kind != "openai" or not declared:
        return None
    return EndpointUpstream(config, declared)


async def run_endpoint(
    endpoints: EndpointUpstream | None,
    upstream_names: Mapping[str, str],
    body: bytes,
    sender: FrameSender,
    started: Started,
    *,
    whole: bool = False,
) -> Usage:
    """One `endpoint` job on this worker (404 when it serves none of them); `whole`: a batch
    line or async job, whose JSON answer is the `done` frame's body."""
    if endpoints is None:
        raise BackendError(
            "this worker serves no other endpoints", status=404, code="model_not_found"
        )
    return await endpoints.run(upstream_names, body, sender, started, whole=whole)


class EndpointUpstream:
    def __init__(self, config: BackendConfig, endpoints: list[str]) -> None:
        self.endpoints = frozenset(endpoints)
        self._base = base_url(config, "https://api.openai.com/v1").removesuffix("/v1")
        headers = {"user-agent": "llmq-worker", **config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        t = config.timeouts
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(t.total, connect=t.connect, read=t.first_token),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(
        self,
        upstream_names: Mapping[str, str],
        body: bytes,
        sender: FrameSender,
        started: Started,
        *,
        whole: bool = False,
    ) -> Usage:
        call, raw = unpack(body)
        if call.path not in self.endpoints:
            raise BackendError(
                f"this worker does not serve {call.path}", status=404, code="model_not_found"
            )
        if call.content_type.startswith("application/json"):
            raw = _renamed(raw, upstream_names)
        request = self._client.build_request(
            "POST",
            self._base + call.path,
            content=raw,
            headers={"content-type": call.content_type},
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise BackendError(
                f"the upstream could not be reached ({type(exc).__name__})",
                status=502,
                code="upstream_unavailable",
                retryable=True,
            ) from None
        try:
            if whole:
                return await self._whole(response, sender)
            return await self._relay(response, sender, started)
        finally:
            await response.aclose()

    async def _whole(self, response: httpx.Response, sender: FrameSender) -> Usage:
        """The answer as one JSON body in the `done` frame (batch lines, async jobs)."""
        data = await response.aread()
        _raise_for_status(response.status_code, data)
        if _json(data) is None:
            raise BackendError("the upstream's answer is not JSON", status=502)
        usage = _usage(_json(data))
        await sender.done(Done(usage=usage, finish_reason=None, body=msgspec.Raw(data)))
        return usage

    async def _relay(
        self, response: httpx.Response, sender: FrameSender, started: Started
    ) -> Usage:
        kind = response.headers.get("content-type", "application/octet-stream")
        if response.status_code >= 400:
            _raise_for_status(response.status_code, await response.aread())
        await started(True)
        await sender.chunk(encode_head(EndpointHead(response.status_code, kind)))
        kept = bytearray() if kind.startswith("application/json") else None
        async for piece in response.aiter_bytes(PIECE):
            if kept is not None and len(kept) < USAGE_SCAN:
                kept += piece
            await sender.chunk(piece)
        usage = _usage(_json(bytes(kept)) if kept is not None else None)
        await sender.done(Done(usage=usage, finish_reason=None))
        return usage


def _raise_for_status(status: int, data: bytes) -> None:
    if status < 400:
        return
    fields = error_fields(_json(data))
    raise BackendError(
        fields.message or f"the upstream answered {status}",
        status=status,
        type=fields.type or "upstream_error",
        code=fields.code or "upstream_error",
        param=fields.param,
    )


def _renamed(raw: bytes, upstream_names: Mapping[str, str]) -> bytes:
    fields = _json(raw)
    model = fields.get("model") if isinstance(fields, dict) else None
    if not isinstance(model, str) or upstream_names.get(model, model) == model:
        return raw
    assert isinstance(fields, dict)
    return _encoder.encode({**fields, "model": upstream_names[model]})


def _json(data: bytes) -> Any:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


def _usage(body: Any) -> Usage:
    raw = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(raw, dict):
        return Usage(0, 0, 0)
    prompt = int(raw.get("prompt_tokens") or raw.get("input_tokens") or 0)
    completion = int(raw.get("completion_tokens") or raw.get("output_tokens") or 0)
    return Usage(prompt, completion, int(raw.get("total_tokens") or prompt + completion))
