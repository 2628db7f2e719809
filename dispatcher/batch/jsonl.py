"""Batch files: reading the input JSONL and writing OpenAI's output and error lines. Pure.

Input line: `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
Blank lines are skipped; every other line counts (`request_counts.total`) and ends up exactly
once in the output file (a 200) or the error file (an error response, or a line that never
ran with `response: null` and an `error` that names its line number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from llmq.dispatcher.batch.records import (
    BATCH_REQUEST_PREFIX,
    BatchUsage,
    RequestCounts,
    Result,
    Unrun,
)
from llmq.schemas.frames import Done, Failed


class NotJsonl(ValueError):
    """The file as a whole is not JSONL: a 400 when the batch is created."""


class TooManyLines(ValueError):
    pass


@dataclass(slots=True)
class InputLine:
    number: int
    """1-based line number in the file."""
    custom_id: str | None
    body: bytes | None
    """The request body as sent (raw JSON), when the envelope was valid."""
    error: Unrun | None = None


_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_str = msgspec.json.Decoder(str)


def split_lines(data: bytes, max_lines: int) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; NotJsonl for a file that is not UTF-8 or
    has no line at all, TooManyLines beyond `max_lines`."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJsonl(f"the file is not UTF-8 text (byte {exc.start})") from None
    out: list[tuple[int, bytes]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if line:
            out.append((number, line))
            if len(out) > max_lines:
                raise TooManyLines(f"the file has more than {max_lines} requests")
    if not out:
        raise NotJsonl("the file is empty")
    return out


def parse_input(data: bytes, endpoint: str, max_lines: int) -> list[InputLine]:
    """Every request line of a batch input file, each either valid (`body` set) or with the
    `error` that keeps it from running. Raises NotJsonl when no line is a JSON object."""
    lines: list[InputLine] = []
    seen: set[str] = set()
    any_object = False
    for number, raw in split_lines(data, max_lines):
        line = _parse_line(number, raw, endpoint)
        if line.error is None or line.error.code != "invalid_json":
            any_object = True
        if line.error is None and line.custom_id is not None:
            if line.custom_id in seen:
                line.error = _error(
                    number, "duplicate_custom_id", f"custom_id `{line.custom_id}` is used twice"
                )
                line.body = None
            seen.add(line.custom_id)
        lines.append(line)
    if not any_object:
        raise NotJsonl("no line of the file is a JSON object; expected JSONL")
    return lines


def _error(number: int, code: str, message: str, param: str | None = None) -> Unrun:
    return Unrun(code=code, message=f"line {number}: {message}", line=number, param=param)


def _parse_line(number: int, raw: bytes, endpoint: str) -> InputLine:
    try:
        fields = _raw_object.decode(raw)
    except msgspec.DecodeError:
        return InputLine(number, None, None, _error(number, "invalid_json", "not a JSON object"))
    custom_id: str | None = None
    try:
        if "custom_id" in fields:
            custom_id = _str.decode(fields["custom_id"])
    except msgspec.DecodeError:
        pass
    if not custom_id:
        return InputLine(
            number,
            None,
            None,
            _error(
                number, "missing_custom_id", "`custom_id` must be a non-empty string", "custom_id"
            ),
        )
    method = _text(fields.get("method"))
    if method is not None and method.upper() != "POST":
        return InputLine(
            number,
            custom_id,
            None,
            _error(number, "invalid_method", "`method` must be POST", "method"),
        )
    url = _text(fields.get("url"))
    if url is not None and url != endpoint:
        return InputLine(
            number,
            custom_id,
            None,
            _error(number, "invalid_url", f"`url` must be the batch's endpoint {endpoint}", "url"),
        )
    body = fields.get("body")
    if body is None or not bytes(body).lstrip().startswith(b"{"):
        return InputLine(
            number,
            custom_id,
            None,
            _error(number, "missing_body", "`body` must be a JSON object", "body"),
        )
    return InputLine(number, custom_id, bytes(body))


def _text(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _str.decode(raw)
    except msgspec.DecodeError:
        return ""


# --- output ------------------------------------------------------------------------------


class _Response(Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _OutputLine(Struct):
    id: str
    custom_id: str | None
    response: _Response | None
    error: dict[str, Any] | None


_encoder = msgspec.json.Encoder()


def output_line(job_id: str, custom_id: str | None, result: Result) -> tuple[bytes, bool]:
    """One line of the output file (True) or the error file (False), newline included."""
    request_id = BATCH_REQUEST_PREFIX + job_id.replace("-", "_")
    if isinstance(result, Done):
        response = _Response(200, job_id, result.body or msgspec.Raw(b"{}"))
        line = _OutputLine(request_id, custom_id, response, None)
        return _encoder.encode(line) + b"\n", True
    if isinstance(result, Failed):
        body = msgspec.Raw(_encoder.encode({"error": result.error}))
        line = _OutputLine(request_id, custom_id, _Response(result.status, job_id, body), None)
        return _encoder.encode(line) + b"\n", False
    error = msgspec.to_builtins(result)
    error.pop("frame", None)
    return _encoder.encode(_OutputLine(request_id, custom_id, None, error)) + b"\n", False


@dataclass
class Tally:
    counts: RequestCounts
    usage: BatchUsage


def tally(results: dict[int, Result], total: int) -> Tally:
    counts = RequestCounts(total=total)
    usage = BatchUsage()
    for result in results.values():
        if isinstance(result, Done):
            counts.completed += 1
            usage.input_tokens += result.usage.prompt_tokens
            usage.output_tokens += result.usage.completion_tokens
        else:
            counts.failed += 1
    usage.total_tokens = usage.input_tokens + usage.output_tokens
    return Tally(counts, usage)
