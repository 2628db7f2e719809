"""Client matrix: the OpenAI Agents SDK against llmq — on its default model (the Responses
API) and on chat completions — with a chat upstream that really calls tools and hands off:
an agent that calls a function tool, and a triage agent that hands off to another."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.clients import BONJOUR, SUNNY, Served, served

__all__ = ["served"]


def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_tool_and_a_handoff(served: Served, api: str) -> None:
    # imported here: the SDK takes a second to import, in every xdist worker that collects it
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    kind = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
    model = kind(model=served.model, openai_client=client)
    weather = Agent(name="weather", instructions="Answer about the weather.", model=model,
                    tools=[function_tool(get_weather)])  # fmt: skip
    result = await Runner.run(weather, "weather in Oslo?")
    assert result.final_output == SUNNY
    called = [i for i in result.new_items if i.type == "tool_call_output_item"]
    assert called and called[0].output == "sunny in Oslo"
    french = Agent(name="french", instructions="You only speak French.", model=model)
    triage = Agent(name="triage", instructions="Route the user.", model=model, handoffs=[french])
    handed = await Runner.run(triage, "Please answer in French")
    assert handed.final_output == BONJOUR and handed.last_agent.name == "french"
    await client.close()
