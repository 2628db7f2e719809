"""Batch input lines in, output and error lines out (pure)."""

from __future__ import annotations

import json

import msgspec
import pytest

from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines, output_line, parse_input, tally
from llmq.dispatcher.batch.records import Unrun
from llmq.schemas.frames import Done, failure
from llmq.schemas.openai import Usage

CHAT = "/v1/chat/completions"


def line(custom_id: object = "a", url: str = CHAT, **extra: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}
    ).encode()


def test_valid_and_invalid_lines_keep_their_numbers() -> None:
    data = b"\n".join(
        [
            line("a"),
            b"",
            b"{not json",
            line(""),
            line("b", url="/v1/embeddings"),
            line("c", method="GET"),
            json.dumps({"custom_id": "d", "body": "text"}).encode(),
            line("a"),
            b"   ",
            line("e"),
        ]
    )
    lines = parse_input(data, CHAT, max_lines=100)
    assert [x.number for x in lines] == [1, 3, 4, 5, 6, 7, 8, 10]
    codes = {x.number: x.error.code if x.error else None for x in lines}
    assert codes == {
        1: None,
        3: "invalid_json",
        4: "missing_custom_id",
        5: "invalid_url",
        6: "invalid_method",
        7: "missing_body",
        8: "duplicate_custom_id",
        10: None,
    }
    assert lines[0].body is not None and json.loads(lines[0].body)["model"] == "m"
    assert lines[2].error is not None and lines[2].error.message.startswith("line 4:")
    assert lines[2].error.line == 4


def test_method_and_url_may_be_left_out() -> None:
    data = json.dumps({"custom_id": "x", "body": {"model": "m"}}).encode()
    (only,) = parse_input(data, CHAT, 10)
    assert only.error is None


@pytest.mark.parametrize("data", [b"", b"\n \n", b"a,b\n1,2\n", b"[1]\n[2]\n", b"\xff\xfe{}"])
def test_not_jsonl(data: bytes) -> None:
    with pytest.raises(NotJsonl):
        parse_input(data, CHAT, 10)


def test_too_many_lines() -> None:
    data = b"\n".join(line(str(i)) for i in range(4))
    assert len(parse_input(data, CHAT, 4)) == 4
    with pytest.raises(TooManyLines):
        parse_input(data, CHAT, 3)


def test_output_lines_match_openai() -> None:
    body = msgspec.Raw(b'{"id":"chatcmpl-1","object":"chat.completion"}')
    done = Done(usage=Usage(1, 2, 3), finish_reason="stop", body=body)
    data, ok = output_line("abc-3", "c3", done)
    assert ok and data.endswith(b"\n")
    assert json.loads(data) == {
        "id": "batch_req_abc_3",
        "custom_id": "c3",
        "response": {
            "status_code": 200,
            "request_id": "abc-3",
            "body": {"id": "chatcmpl-1", "object": "chat.completion"},
        },
        "error": None,
    }
    data, ok = output_line("abc-4", "c4", failure(502, "boom", "upstream_error", "bad"))
    assert not ok
    parsed = json.loads(data)
    assert parsed["response"]["status_code"] == 502 and parsed["error"] is None
    assert parsed["response"]["body"]["error"]["message"] == "boom"
    data, ok = output_line("abc-5", None, Unrun(code="invalid_json", message="line 5: x", line=5))
    assert not ok
    assert json.loads(data) == {
        "id": "batch_req_abc_5",
        "custom_id": None,
        "response": None,
        "error": {"code": "invalid_json", "message": "line 5: x", "line": 5},
    }


def test_tally() -> None:
    done = Done(usage=Usage(2, 3, 5))
    totals = tally({1: done, 2: done, 3: Unrun(code="x", message="y")}, 3)
    assert msgspec.to_builtins(totals.counts) == {"total": 3, "completed": 2, "failed": 1}
    assert msgspec.to_builtins(totals.usage) == {
        "input_tokens": 4,
        "output_tokens": 6,
        "total_tokens": 10,
    }
