"""Client matrix: langchain-openai's ChatOpenAI against llmq — on chat completions and with
`use_responses_api=True` — with a chat upstream that really calls tools, writes JSON and
reasons: text, a tool call and its answer, structured output, reasoning."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.e2e.clients import GREETING, REASONING, SUNNY, WEATHER, Served, served

__all__ = ["served"]


def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


class Weather(BaseModel):
    city: str
    temperature: float


@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
async def test_langchain_openai(served: Served, responses: bool) -> None:
    # imported here: langchain takes a while to import, in every xdist worker that collects it
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    weather_tool = tool(get_weather)
    llm = ChatOpenAI(
        model=served.model, base_url=f"{served.url}/v1", api_key="x",  # type: ignore[arg-type]
        max_retries=0, use_responses_api=responses,
    )  # fmt: skip
    said = await llm.ainvoke("hi")
    assert said.text == GREETING
    chunks = [c async for c in llm.astream("hi")]
    assert "".join(c.text for c in chunks) == GREETING
    with_tools = llm.bind_tools([weather_tool])
    question = HumanMessage("weather in Oslo?")
    asked = await with_tools.ainvoke([question])
    (call,) = asked.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Oslo"}
    result = ToolMessage(content=weather_tool.invoke(call["args"]), tool_call_id=call["id"])
    answered = await with_tools.ainvoke([question, asked, result])
    assert answered.text == SUNNY
    method = "json_schema"
    structured = llm.with_structured_output(Weather, method=method)
    assert (await structured.ainvoke("json")) == Weather(**WEATHER)
    if responses:
        thinker = ChatOpenAI(
            model=served.model, base_url=f"{served.url}/v1", api_key="x",  # type: ignore[arg-type]
            max_retries=0, use_responses_api=True, reasoning={"effort": "low", "summary": "auto"},
        )  # fmt: skip
        thought = await thinker.ainvoke("hi")
        blocks = [b for b in thought.content_blocks if b["type"] == "reasoning"]
        assert blocks and blocks[0].get("reasoning") == REASONING
        assert thought.text == GREETING
