"""One structured log line per request, on the logger `llmq.request`.

With `log_json` the line is one JSON object (`msg` = "request" and the fields below);
otherwise `request id=... route=... tenant=... model=... status=... ...`. The request id is
the job id, returned to the client as `X-Request-ID`. A record carries no API key, prompt,
completion or backend credential, so none can be logged.
"""

from __future__ import annotations

import json
import logging

from llmq.api.request_record import RequestRecord

log = logging.getLogger("llmq.request")

MAX_VALUE = 200
"""Longest value written in the plain format (a model name comes from the client)."""


class RequestLog:
    def __init__(self, as_json: bool, logger: logging.Logger = log) -> None:
        self.as_json = as_json
        self.log = logger

    def observe(self, r: RequestRecord) -> None:
        logger = self.log
        if not logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "request_id": r.job_id,
            "route": r.route,
            "tenant": r.tenant,
            "model": r.model[:MAX_VALUE],
            "stream": r.stream,
            "status": r.status,
            "error": r.error_code,
            "worker": r.worker,
            "latency_ms": round(r.latency * 1000, 2),
            "ttft_ms": None if r.ttft is None else round(r.ttft * 1000, 2),
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
        }
        if self.as_json:
            logger.info("request", extra={"fields": fields})
            return
        text = " ".join(f"{k}={_plain(v)}" for k, v in fields.items() if v is not None)
        logger.info("request %s", text, extra={"fields": fields})


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)[:MAX_VALUE]
    if not text or any(c.isspace() or not c.isprintable() or c in '"=' for c in text):
        return json.dumps(text)
    return text
