"""The line decoders of upstream streams (worker/upstream/sse.py, ndjson.py); the backends'
tests cover them on the wire."""

from __future__ import annotations

import msgspec
import pytest

from llmq.worker.upstream.ndjson import NDJSONDecoder
from llmq.worker.upstream.sse import SSEDecoder


def test_sse_events_end_at_blank_lines_and_join_data_lines() -> None:
    sse = SSEDecoder()
    lines = [": comment", "event: delta", "data: a", "data:b", "", "error: {}", "data: x"]
    events = [event for line in lines if (event := sse.feed(line))]
    assert events == [("delta", "a\nb")]
    assert sse.flush() == ("error", "{}\nx")
    assert sse.flush() is None


class _Item(msgspec.Struct):
    n: int


def test_ndjson_skips_blank_lines_and_rejects_garbage() -> None:
    lines = NDJSONDecoder(_Item)
    assert lines.feed('{"n": 1}') == _Item(1)
    assert lines.feed("  ") is None
    with pytest.raises(msgspec.DecodeError):
        lines.feed("{nope")
