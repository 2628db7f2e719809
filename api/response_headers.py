"""The headers OpenAI puts on every response, on every response of llmq — errors, 404s and
405s included — whichever path served it (`HotPaths` wraps `send` with `openai_headers`).

- `x-request-id`: the id the serving path set (the job id, `resp_<id>` …), else a new one
  (`req_<hex>`), so every answer can be named in a support request and in the log.
- `openai-processing-ms`: milliseconds from the request's arrival to its response's start
  (for a stream, to its headers).
- `openai-version`: the API version llmq speaks (`2020-10-01`, as OpenAI sends).

Per message it costs one call; the headers are added once, at `http.response.start`.
"""

from __future__ import annotations

import secrets
import time

from starlette.types import Message, Send

OPENAI_VERSION = b"2020-10-01"
_REQUEST_ID = b"x-request-id"


def openai_headers(send: Send) -> Send:
    """`send` that adds the three headers to the response's start."""
    began = time.perf_counter()

    async def with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or ())
            if not any(name.lower() == _REQUEST_ID for name, _ in headers):
                headers.append((_REQUEST_ID, b"req_" + secrets.token_hex(16).encode()))
            took = round((time.perf_counter() - began) * 1000)
            headers.append((b"openai-processing-ms", str(took).encode()))
            headers.append((b"openai-version", OPENAI_VERSION))
            message["headers"] = headers
        await send(message)

    return with_headers
