"""A fast OpenAI-compatible mock upstream: the baseline every overhead figure is measured
against. Raw ASGI under uvicorn, fixed answers, no framework cost.

Run alone: python bench/mock_upstream.py PORT [--words N] [--certfile PEM --keyfile PEM]
(`--words`: content chunks per streamed answer, default 4; with a certificate it serves https,
for measuring TLS upstreams against a local CA: `tests/worker/upstream/pki.py` makes one).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import uvicorn

_WORDS = ["hello", " from", " the", " mock"]


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(_WORDS)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
        }
    ).encode()


def _chunks(model: str, words: list[str] = _WORDS) -> list[bytes]:
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model}
    out = []
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        out.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out.append(
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
        }
    )
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in out] + [b"data: [DONE]\n\n"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/models"):
        payload = json.dumps(
            {"object": "list", "data": [{"id": "mock", "object": "model"}]}
        ).encode()
        await _send_json(send, payload)
        return
    request = json.loads(body or b"{}")
    model = request.get("model", "mock")
    if request.get("stream"):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for chunk in _chunks(model, _STREAMED):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await _send_json(send, _completion(model))


async def _send_json(send: Any, payload: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


_STREAMED = _WORDS


def main() -> None:
    global _STREAMED
    parser = argparse.ArgumentParser(description="a fast OpenAI-compatible mock upstream")
    parser.add_argument("port", type=int)
    parser.add_argument("--words", type=int, default=len(_WORDS))
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    _STREAMED = [_WORDS[i % len(_WORDS)] for i in range(args.words)]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )


if __name__ == "__main__":
    main()
