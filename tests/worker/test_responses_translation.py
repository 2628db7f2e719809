"""The worker's pure Responses translations: a Responses request as a chat request, and
chat chunks (OpenAI chunk JSON) as Responses events, each checked against OpenAI's spec."""

from __future__ import annotations

from typing import Any

import pytest

from llmq.schemas.responses import skeleton
from llmq.worker.responses_api.events import ResponseEvents, wants_summary
from llmq.worker.responses_api.to_chat import Unsupported, chat_request
from tests.spec import assert_valid

EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
    "response.reasoning_summary_part.added": "ResponseReasoningSummaryPartAddedEvent",
    "response.reasoning_summary_part.done": "ResponseReasoningSummaryPartDoneEvent",
    "response.reasoning_summary_text.delta": "ResponseReasoningSummaryTextDeltaEvent",
    "response.reasoning_summary_text.done": "ResponseReasoningSummaryTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


WEATHER_CALL = {"name": "get_weather", "arguments": "{}"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def fold(
    request: dict[str, Any], chunks: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    response = skeleton(request, "resp_" + "a" * 32, 1_800_000_000)
    events = ResponseEvents(response, summary=wants_summary(request))
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    out += events.finish()
    for event in out:
        assert_valid(EVENT_SCHEMAS[event["type"]], event)
        assert_valid("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert_valid("Response", events.response)
    return out, events.response


def test_request_to_chat_with_everything() -> None:
    request = {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"a": "b"},
        "stream": True,
    }  # fmt: skip
    chat = chat_request(request)
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        ]},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": WEATHER_CALL},
            {"id": "c2", "type": "function", "function": WEATHER_CALL},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "ok"},
    ]  # fmt: skip
    assert chat["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}
    }  # fmt: skip
    assert chat["reasoning_effort"] == "low" and chat["max_completion_tokens"] == 64
    assert (chat["temperature"], chat["top_p"]) == (0.5, 0.9)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "metadata" not in chat


def test_string_input_and_json_object() -> None:
    chat = chat_request({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}})
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    ("request_extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "data": "f"}]}]},
         "input[0].content"),
        ({"truncation": "auto"}, "truncation"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)  # fmt: skip
def test_what_chat_cannot_say_is_refused(request_extra: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        chat_request({"model": "m", "input": "x", **request_extra})
    assert caught.value.param == param


def test_input_file_parts_are_chat_file_parts() -> None:
    parts = [
        {
            "type": "input_file",
            "file_data": "data:application/pdf;base64,JVBE",
            "filename": "a.pdf",
        },
        {"type": "input_file", "file_url": "https://example.com/b.pdf"},
        {"type": "input_file", "file_id": "file-abc"},
    ]
    chat = chat_request({"model": "m", "input": [{"role": "user", "content": parts}]})
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                  "filename": "a.pdf"}},
        {"type": "file", "file": {"file_url": "https://example.com/b.pdf"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]  # fmt: skip


def test_text_stream_events() -> None:
    events, response = fold(
        {"model": "m", "input": "x"},
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": " world"}),
            chunk({}, "stop"),
            {
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        ],
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6]["text"] == "Hello world"
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Hello world"
    assert response["usage"]["input_tokens"] == 3 and response["usage"]["output_tokens"] == 2
    assert (
        events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    )


def test_reasoning_then_text() -> None:
    events, response = fold(
        {"model": "m", "input": "x", "reasoning": {"effort": "high"}},
        [
            chunk({"reasoning_content": "think"}),
            chunk({"reasoning_content": "ing"}),
            chunk({"content": "answer"}),
            chunk({}, "stop"),
        ],
    )
    kinds = [e["type"] for e in events]
    assert kinds[2:8] == [
        "response.output_item.added",
        "response.content_part.added",  # a reasoning_text part, as OpenAI announces it
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
    ]
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert response["output"][0]["content"] == [{"type": "reasoning_text", "text": "thinking"}]
    assert response["reasoning"] == {"effort": "high", "summary": None}


@pytest.mark.parametrize("summary", ["auto", "concise", "detailed"])
def test_reasoning_as_summary_parts_when_a_summary_is_asked_for(summary: str) -> None:
    events, response = fold(
        {"model": "m", "input": "x", "reasoning": {"effort": "high", "summary": summary}},
        [
            chunk({"reasoning_content": "think"}),
            chunk({"reasoning": "ing"}),  # vLLM's newer field name
            chunk({"content": "answer"}),
            chunk({}, "stop"),
        ],
    )
    kinds = [e["type"] for e in events]
    assert kinds[2:9] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert not any(k.startswith("response.reasoning_text") for k in kinds)
    done = events[8]["item"]
    assert done["summary"] == [{"type": "summary_text", "text": "thinking"}]
    assert response["output"][0] == {**done}
    assert events[6]["text"] == "thinking" and events[6]["summary_index"] == 0
    assert response["reasoning"] == {"effort": "high", "summary": summary}
    assert response["output"][1]["content"][0]["text"] == "answer"


def test_tool_calls_stream() -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    events, response = fold(
        {"model": "m", "input": "x", "tools": [TOOL]},
        [
            chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "f2"}}]}),
            chunk({}, "tool_calls"),
        ],
    )
    kinds = [e["type"] for e in events]
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert kinds.count("response.function_call_arguments.done") == 2
    calls = response["output"]
    assert [c["type"] for c in calls] == ["function_call", "function_call"]
    assert calls[0]["call_id"] == "call_1" and calls[0]["arguments"] == '{"city":"Paris"}'
    assert calls[1]["name"] == "f2" and calls[1]["arguments"] == ""
    assert response["status"] == "completed"


def test_length_is_incomplete() -> None:
    events, response = fold(
        {"model": "m", "input": "x"}, [chunk({"content": "a"}), chunk({}, "length")]
    )
    assert events[-1]["type"] == "response.incomplete"
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("reason", [5, {"why": "length"}, ["length"], True])
def test_a_finish_reason_of_another_type_is_passed_over(reason: Any) -> None:
    """A finish reason that is not a string is not `length`: the response completes."""
    _, response = fold({"model": "m", "input": "hi"}, [chunk({"content": "hi"}, reason)])
    assert response["status"] == "completed" and response["incomplete_details"] is None
