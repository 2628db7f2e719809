"""Messages ⇄ chat, as tables: a Messages request → the chat request a chat backend gets
(`worker/messages/to_chat`), what is refused by name, and chat chunks → the Messages events
and the whole Message (`worker/messages/events`). Every event and Message is checked with the
anthropic SDK's own types, strictly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from llmq.schemas.openai import Usage
from llmq.worker.messages.events import MessageEvents, message_usage
from llmq.worker.messages.to_chat import Unsupported, chat_request
from tests.spec.anthropic import assert_event, assert_message

if TYPE_CHECKING:
    from anthropic.types import Message

USER = {"role": "user", "content": "hi"}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def base(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": [USER], **extra}


TRANSLATED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain", base(), {"model": "m", "max_tokens": 64, "messages": [USER]}),
    ("sampling", base(temperature=0.2, top_p=0.9, top_k=5, stop_sequences=["END"]),
     {"model": "m", "max_tokens": 64, "messages": [USER], "temperature": 0.2, "top_p": 0.9,
      "top_k": 5, "stop": ["END"]}),
    ("stream", base(stream=True),
     {"model": "m", "max_tokens": 64, "messages": [USER], "stream": True,
      "stream_options": {"include_usage": True}}),
    ("system string", base(system="be brief"),
     {"model": "m", "max_tokens": 64,
      "messages": [{"role": "system", "content": "be brief"}, USER]}),
    ("system blocks, cache_control accepted", base(system=[
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b"}]),
     {"model": "m", "max_tokens": 64, "messages": [
         {"role": "system", "content": [{"type": "text", "text": "a"},
                                        {"type": "text", "text": "b"}]}, USER]}),
    ("user blocks: text and images", base(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image", "source": PNG},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]),
     {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": [
         {"type": "text", "text": "what is it?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
    ("documents: text and pdf", base(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "the doc"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBERi0x"}}]}]),
     {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": [
         {"type": "text", "text": "the doc"},
         {"type": "file", "file": {"filename": "document.pdf",
                                   "file_data": "data:application/pdf;base64,JVBERi0x"}}]}]}),
    ("tools round trip", base(
        tools=[{"name": "get_weather", "description": "weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[USER,
                  {"role": "assistant", "content": [
                      {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                      {"type": "text", "text": "Let me look."},
                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                       "input": {"city": "Oslo"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                      {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                       "content": [{"type": "text", "text": "no such city"}]},
                      {"type": "text", "text": "and?"}]}]),
     {"model": "m", "max_tokens": 64,
      "tools": [{"type": "function", "function": {
          "name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
      "tool_choice": "required", "parallel_tool_calls": False,
      "messages": [USER,
                   {"role": "assistant", "content": "Let me look.", "tool_calls": [
                       {"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
                   {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                   {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such city"},
                   {"role": "user", "content": [{"type": "text", "text": "and?"}]}]}),
    ("named tool, none", base(tool_choice={"type": "tool", "name": "f"}),
     {"model": "m", "max_tokens": 64, "messages": [USER],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("thinking budget", base(thinking={"type": "enabled", "budget_tokens": 4000}),
     {"model": "m", "max_tokens": 64, "messages": [USER], "reasoning_effort": "medium"}),
    ("thinking off, user id", base(thinking={"type": "disabled"},
                                   metadata={"user_id": "u-1"}),
     {"model": "m", "max_tokens": 64, "messages": [USER], "user": "u-1"}),
    ("Claude Code's: adaptive thinking, clearing thinking", base(
        thinking={"type": "adaptive"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
     {"model": "m", "max_tokens": 64, "messages": [USER]}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "chat"), TRANSLATED, ids=[t[0] for t in TRANSLATED])
def test_translated(name: str, request_: dict[str, Any], chat: dict[str, Any]) -> None:
    assert chat_request(request_) == chat


REFUSED: list[tuple[dict[str, Any], str]] = [
    (base(service_tier="auto"), "service_tier"),
    (base(mcp_servers=[]), "mcp_servers"),
    (base(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (base(context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}),
     "context_management.edits.0.type"),
    (base(messages=[{"role": "user", "content": [{"type": "search_result", "x": 1}]}]),
     "messages.0.content.0.type"),
    (base(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages.0.content.0.source.type"),
    (base(messages=[{"role": "user", "content": [
        {"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]}]),
     "messages.0.content.0.citations"),
    (base(messages=[{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]),
     "messages.0.content.0.type"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_refused_by_name(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as refused:
        chat_request(request_)
    assert refused.value.param == param


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call(index: int, id_: str | None = None, name: str | None = None, args: str = "") -> dict:  # type: ignore[type-arg]
    function: dict[str, Any] = {"arguments": args}
    if name:
        function["name"] = name
    out: dict[str, Any] = {"index": index, "function": function}
    if id_:
        out["id"] = id_
    return out


def fold(chunks: list[dict[str, Any]], usage: Usage) -> tuple[list[dict[str, Any]], Message]:
    """The events (decoded) and the Message of `chunks`; each event's bytes are what
    encoding its object gives (the pre-encoded pieces are exact)."""
    events = MessageEvents("msg_1", "m")
    out = events.start()
    for c in chunks:
        out += events.feed(msgspec.json.encode(c))
    out += events.finish(usage)
    decoded = [msgspec.json.decode(event) for event in out]
    for event, data in zip(decoded, out, strict=True):
        assert_event(event)
        assert msgspec.json.encode(event) == data
    return decoded, assert_message(events.message)


def test_text_events_and_message() -> None:
    events, message = fold(
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
         chunk({"content": "lo"}), chunk({}, "stop")],
        Usage(10, 2, 12),
    )  # fmt: skip
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 2)


def test_thinking_then_tool_calls() -> None:
    events, message = fold(
        [chunk({"reasoning_content": "think"}), chunk({"content": "ok"}),
         chunk({"tool_calls": [call(0, "call_a", "f", '{"a"')]}),
         chunk({"tool_calls": [call(0, args=": 1}")]}),
         chunk({"tool_calls": [call(1, "call_b", "g", "{}")]}),
         chunk({}, "tool_calls")],
        Usage(5, 7, 12, prompt_tokens_details={"cached_tokens": 2}),
    )  # fmt: skip
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use", "tool_use"]
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ["thinking_delta", "text_delta", "input_json_delta", "input_json_delta",
                      "input_json_delta"]  # fmt: skip
    assert message.stop_reason == "tool_use"
    kinds = [(b.type, getattr(b, "input", None)) for b in message.content]
    assert kinds == [("thinking", None), ("text", None), ("tool_use", {"a": 1}),
                     ("tool_use", {})]  # fmt: skip
    assert message.usage.cache_read_input_tokens == 2 and message.usage.input_tokens == 3


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
     ("content_filter", "refusal"), ("weird", "end_turn")],
)  # fmt: skip
def test_stop_reasons(finish: str, stop: str) -> None:
    _, message = fold([chunk({"content": "x"}, finish)], Usage(1, 1, 2))
    assert message.stop_reason == stop


def test_usage_in_anthropic_terms() -> None:
    usage = Usage(100, 5, 105, prompt_tokens_details={"cached_tokens": 60,
                                                      "cache_creation_tokens": 30})  # fmt: skip
    assert message_usage(usage) == {
        "input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 60,
    }  # fmt: skip


def test_a_whole_completion_gives_the_message_its_stream_gives() -> None:
    """What a non-streamed job builds from the backend's whole body (`whole`) is the Message
    the events of the same output add up to."""
    call_a = {"id": "call_a", "type": "function",
              "function": {"name": "f", "arguments": '{"a": 1}'}}  # fmt: skip
    completion = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "ok", "reasoning_content": "think",
        "tool_calls": [call_a]}}]}  # fmt: skip
    whole = MessageEvents("msg_1", "m")
    whole.whole(completion)
    whole.finish(Usage(5, 7, 12))
    _, streamed = fold(
        [chunk({"reasoning_content": "think"}), chunk({"content": "ok"}),
         chunk({"tool_calls": [{**call_a, "index": 0}]}), chunk({}, "tool_calls")],
        Usage(5, 7, 12),
    )  # fmt: skip
    assert assert_message(whole.message) == streamed


def test_deltas_with_escapes_are_exact_json() -> None:
    """Quotes, line breaks, control and non-ASCII characters in a delta: the pre-encoded
    pieces still give the event's exact JSON (`fold` compares the bytes)."""
    text = 'say "hi"\n\tthen \\ é 🙂 \x01 </script>'
    events, message = fold(
        [chunk({"reasoning": text}), chunk({"content": text}), chunk({}, "stop")],
        Usage(1, 2, 3),
    )  # fmt: skip
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": text},
                      {"type": "text_delta", "text": text}]  # fmt: skip
    assert message.content[1].type == "text" and message.content[1].text == text


def test_output_text_counts_only_text_blocks() -> None:
    """What the worker counts when the backend reports no usage: text, not thinking."""
    events = MessageEvents("msg_1", "m")
    for c in [chunk({"reasoning_content": "hmm"}), chunk({"content": "a "}),
              chunk({"content": "b"})]:  # fmt: skip
        events.feed(msgspec.json.encode(c))
    assert events.output_text() == "a b"


@pytest.mark.parametrize("reason", [5, {"why": "stop"}, ["length"], True])
def test_a_finish_reason_of_another_type_is_passed_over(reason: Any) -> None:
    """The fold reads chunks loosely (the backend's parser types them): a finish reason
    that is not a string is not a stop reason — the Message ends as `end_turn`."""
    events = MessageEvents("msg_1", "m")
    events.start()
    bad = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": reason}]}
    events.feed(msgspec.json.encode(bad))
    events.finish(Usage(1, 1, 2))
    assert_message(events.message)
    assert events.message["stop_reason"] == "end_turn" and events.finish_reason is None
