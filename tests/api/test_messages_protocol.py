"""The Messages API's edge (`api/messages/protocol`), as tables: what a request body may be
(a 400 naming the field otherwise), and llmq's errors in Anthropic's shape and statuses."""

from __future__ import annotations

import json

import pytest
from starlette.responses import Response

from llmq.api.errors import ApiError, error_response
from llmq.api.messages.protocol import anthropic_shaped, check_max_tokens, decode, from_exception
from llmq.schemas.admission import Refusal
from llmq.schemas.messages import count_request_decoder, message_request_decoder
from llmq.schemas.openai import ErrorBody
from tests.spec.anthropic import assert_error

OK = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def test_a_valid_request_keeps_unknown_fields_and_blocks() -> None:
    body = (b'{"model":"m","max_tokens":5,"container":"c","messages":[{"role":"user",'
            b'"content":[{"type":"search_result","anything":1},{"type":"text","text":"x",'
            b'"cache_control":{"type":"ephemeral"}}]}]}')  # fmt: skip
    request = decode(body, message_request_decoder)
    assert request.max_tokens == 5 and len(request.messages[0].content) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"m","max_tokens":"5","messages":[]}', "max_tokens"),
        (b'{"model":"m","max_tokens":5,"messages":[]}', "messages"),
        (b'{"model":"m","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}',
         "messages[0].role"),
        (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image",'
         b'"source":{"type":"base64","data":5}}]}]}', "messages.0.content.0"),
        (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result",'
         b'"tool_use_id":"t","content":[{"type":"text","text":7}]}]}]}',
         "messages.0.content.0.content.0"),
        (b'{"model":"m","max_tokens":5,"thinking":{"type":"on"},"messages":[]}', "thinking.type"),
        (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"\xff"}]}', None),
        (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text",'
         b'"text":"x","n":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}]}", None),
        (b"", None),
        (b"[]", None),
    ],
)  # fmt: skip
def test_refused_with_a_400_naming_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        decode(body, message_request_decoder)
    assert refused.value.status == 400
    assert refused.value.param == param


def test_count_tokens_needs_no_max_tokens() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    assert decode(body, count_request_decoder).model == "m"


@pytest.mark.parametrize("value", [0, -1, 1001, 10**40])
def test_max_tokens_bounds(value: int) -> None:
    with pytest.raises(ApiError) as refused:
        check_max_tokens(value, 1000)
    assert refused.value.param == "max_tokens"
    assert check_max_tokens(1000, 1000) == 1000


@pytest.mark.parametrize(
    ("status", "shown", "kind"),
    [(400, 400, "invalid_request_error"), (401, 401, "authentication_error"),
     (403, 403, "permission_error"), (404, 404, "not_found_error"),
     (413, 413, "invalid_request_error"), (429, 429, "rate_limit_error"),
     (502, 500, "api_error"), (503, 529, "overloaded_error"), (504, 504, "timeout_error")],
)  # fmt: skip
def test_statuses_and_types(status: int, shown: int, kind: str) -> None:
    resp = from_exception(ApiError(status, "why"), "req1")
    body = json.loads(bytes(resp.body))
    assert (resp.status_code, assert_error(body).error.type) == (shown, kind)
    assert body["request_id"] == resp.headers["request-id"] == "req1"
    if shown in (429, 529):
        assert resp.headers["retry-after"]


def test_a_refusal_keeps_its_headers() -> None:
    refusal = Refusal(429, "slow down", "rate_limit_exceeded", headers={"retry-after": "7"})
    resp = from_exception(refusal, "req2")
    assert (resp.status_code, resp.headers["retry-after"]) == (429, "7")


def test_the_shared_paths_openai_errors_are_reshaped() -> None:
    body = ErrorBody(message="no", type="upstream_error", code="upstream_unavailable")
    openai = error_response(502, body, {"retry-after": "2", "x-request-id": "j"})
    resp = anthropic_shaped(openai, "j")
    shaped = json.loads(bytes(resp.body))
    assert resp.status_code == 500 and resp.headers["retry-after"] == "2"
    assert shaped == {"error": {"type": "api_error", "message": "no"}, "request_id": "j",
                      "type": "error"}  # fmt: skip
    answer = Response(b"{}", media_type="application/json")
    assert anthropic_shaped(answer, "j") is answer
