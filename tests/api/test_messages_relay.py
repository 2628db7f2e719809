"""A `message` job's chunk frames as Anthropic's named SSE events (`api/messages/relay`)."""

from __future__ import annotations

from llmq.api.messages.relay import sse_events
from llmq.api.sse import named_event
from llmq.schemas.frames import join_chunks


def test_each_event_of_a_frame_is_named_by_its_type() -> None:
    """Events that begin with their `type` (llmq's, Anthropic's) and one that does not (the
    type decoded; none at all: `message`) each become `event: <type>` and their data."""
    events = [
        b'{"type":"message_start","message":{"id":"msg_1"}}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\\"b"}}',
        b'{"index":0,"type":"content_block_stop"}',
        b'{"no":"type"}',
    ]
    names = [b"message_start", b"content_block_delta", b"content_block_stop", b"message"]
    expected = b"".join(named_event(n, e) for n, e in zip(names, events, strict=True))
    assert sse_events(join_chunks(events)) == (expected, 4)
    assert sse_events(events[1]) == (named_event(names[1], events[1]), 1)
