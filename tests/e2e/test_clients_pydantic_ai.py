"""Client matrix: pydantic-ai against llmq — its chat model and its Responses model — with a
chat upstream that really calls tools and writes JSON: text, a tool the agent runs,
structured output (pydantic-ai's `final_result` tool)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.e2e.clients import GREETING, SUNNY, WEATHER, Served, served

__all__ = ["served"]


class Weather(BaseModel):
    city: str
    temperature: float


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_pydantic_ai(served: Served, api: str) -> None:
    # imported here: pydantic-ai takes a second to import, in every xdist worker that collects it
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=f"{served.url}/v1", api_key="x")
    kind = OpenAIChatModel if api == "chat" else OpenAIResponsesModel
    model = kind(served.model, provider=provider)
    plain = await Agent(model).run("hi")
    assert plain.output == GREETING
    agent = Agent(model, instructions="Answer about the weather.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather of a city."""
        return f"sunny in {city}"

    answered = await agent.run("weather in Oslo?")
    assert answered.output == SUNNY
    assert any(
        part.part_kind == "tool-return" and part.content == "sunny in Oslo"
        for message in answered.all_messages() for part in message.parts
    )  # fmt: skip
    structured = await Agent(model, output_type=Weather).run("json")
    assert structured.output == Weather(**WEATHER)
