"""Chat-completion chunks (OpenAI chunk JSON) as Responses stream events and one Response.

Pure: `ResponseEvents.feed` takes chunk dicts in the order a chat stream sends them and
answers the Responses events they mean, each with its `sequence_number`; `finish` closes
the open items and ends with `response.completed` (or `.incomplete`). A non-streamed
response is the same fold with the events thrown away: `response` is the final object.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from llmq.schemas.responses import usage_of

Json = dict[str, Any]
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
SUMMARIES = frozenset({"auto", "concise", "detailed"})
"""`reasoning.summary` values that turn the backend's reasoning into summary parts."""


def wants_summary(request: Json) -> bool:
    reasoning = request.get("reasoning")
    return isinstance(reasoning, dict) and reasoning.get("summary") in SUMMARIES


class ResponseEvents:
    """The fold of one chat stream into Responses events and the final Response."""

    def __init__(
        self,
        response: Json,
        quiet: bool = False,
        summary: bool = False,
        namespaces: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.response = response
        self.namespaces = namespaces or {}
        """Flattened chat function name → (namespace, name) (`to_chat.namespaces`)."""
        self.quiet = quiet
        self.summary = summary
        """Reasoning goes out as summary parts (`reasoning.summary` was asked for), not as
        reasoning text."""
        """Nobody reads the events (a whole response): they carry no snapshots."""
        self.seq = 0
        self.finish_reason: str | None = None
        self.usage: Json | None = None
        self._open: Json | None = None
        """The output item receiving deltas (message or reasoning), if any."""
        self._calls: dict[int, Json] = {}
        """Function-call items by their chat tool-call index."""
        self._id = response["id"].removeprefix("resp_")

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _copy(self, value: Json) -> Json:
        """The value as it is now (later deltas change the original)."""
        return value if self.quiet else _decoder.decode(_encoder.encode(value))

    def _snapshot(self, kind: str) -> Json:
        return self._event(kind, response=self._copy(self.response))

    def start(self) -> list[Json]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def feed(self, chunk: Json) -> list[Json]:
        events: list[Json] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._text("reasoning", reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            reason = choice.get("finish_reason")
            if reason and isinstance(reason, str):
                self.finish_reason = reason
        return events

    def _new_item(self, item: Json) -> Json:
        index = len(self.response["output"])
        self.response["output"].append(item)
        return self._event("response.output_item.added", output_index=index, item=self._copy(item))

    def _text(self, kind: str, text: str) -> list[Json]:
        events: list[Json] = []
        item = self._open
        if item is None or item["type"] != kind:
            events += self._close_open()
            index = len(self.response["output"])
            if kind == "message":
                item = {"id": f"msg_{self._id}{index}", "type": "message", "status": "in_progress"}
                item |= {"role": "assistant", "content": []}
                part: Json = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            else:
                item = {"id": f"rs_{self._id}{index}", "type": "reasoning", "summary": []}
                if self.summary:
                    item["status"] = "in_progress"
                else:
                    item["content"] = []
                part = {"type": "summary_text" if self.summary else "reasoning_text", "text": ""}
            events.append(self._new_item(item))
            item["summary" if self._summarised(item) else "content"].append(part)
            self._open = item
            if self.summary and kind == "reasoning":
                events.append(self._part_event("response.reasoning_summary_part.added", item))
            else:  # OpenAI announces a reasoning_text part as a message's output_text part
                events.append(self._part_event("response.content_part.added", item))
        self._part(item)["text"] += text
        where = self._where(item)
        if kind == "message":
            events.append(
                self._event("response.output_text.delta", **where, delta=text, logprobs=[])
            )
        elif self.summary:
            events.append(self._event("response.reasoning_summary_text.delta", **where, delta=text))
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=text))
        return events

    def _summarised(self, item: Json) -> bool:
        return self.summary and item["type"] == "reasoning"

    def _part(self, item: Json) -> Json:
        """The part receiving the item's deltas."""
        part: Json = item["summary" if self._summarised(item) else "content"][0]
        return part

    def _where(self, item: Json) -> Json:
        index = self.response["output"].index(item)
        if self._summarised(item):
            return {"item_id": item["id"], "output_index": index, "summary_index": 0}
        return {"item_id": item["id"], "output_index": index, "content_index": 0}

    def _part_event(self, kind: str, item: Json) -> Json:
        return self._event(kind, **self._where(item), part=self._copy(self._part(item)))

    def _close_open(self) -> list[Json]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = self._where(item)
        text = self._part(item)["text"]
        item["status"] = "completed"
        if item["type"] == "message":
            events = [
                self._event("response.output_text.done", **where, text=text, logprobs=[]),
                self._part_event("response.content_part.done", item),
            ]
        elif self.summary:
            events = [
                self._event("response.reasoning_summary_text.done", **where, text=text),
                self._part_event("response.reasoning_summary_part.done", item),
            ]
        else:
            events = [
                self._event("response.reasoning_text.done", **where, text=text),
                self._part_event("response.content_part.done", item),
            ]
        index = where["output_index"]
        return [
            *events,
            self._event("response.output_item.done", output_index=index, item=self._copy(item)),
        ]

    def _call(self, delta: Json) -> list[Json]:
        events: list[Json] = []
        position = int(delta.get("index", len(self._calls)))
        function = delta.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            events += self._close_open()
            call_id = delta.get("id") or f"call_{self._id}{position}"
            item = {"id": f"fc_{self._id}{len(self.response['output'])}", "type": "function_call"}
            item |= {"status": "in_progress", "call_id": call_id}
            item |= {"name": function.get("name") or "", "arguments": ""}
            self._calls[position] = item
            self._unflatten(item)
            events.append(self._new_item(item))
        elif function.get("name"):
            item["name"] += function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            index = self.response["output"].index(item)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return events

    def _unflatten(self, item: Json) -> None:
        """A call of a namespace's function in the namespace form (`namespace` + `name`)."""
        found = self.namespaces.get(item["name"])
        if found is not None:
            item["namespace"], item["name"] = found

    def finish(self, usage: Json | None = None) -> list[Json]:
        """Close every open item and end the response; `usage` (chat shape) wins over any
        usage seen in the chunks."""
        events = self._close_open()
        for item in self._calls.values():
            index = self.response["output"].index(item)
            item["status"] = "completed"
            self._unflatten(item)
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    name=item["name"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
            events.append(
                self._event("response.output_item.done", output_index=index, item=self._copy(item))
            )
        self._calls = {}
        response = self.response
        response["usage"] = usage_of(usage or self.usage)
        reason = _INCOMPLETE.get(self.finish_reason or "")
        if reason is not None:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": reason}
            events.append(self._snapshot("response.incomplete"))
        else:
            response["status"] = "completed"
            response["completed_at"] = int(time.time())
            events.append(self._snapshot("response.completed"))
        return events
