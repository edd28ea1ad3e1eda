"""The OpenAI Agents SDK (``openai-agents``) runs one agent turn with a function tool through
dragoman's Responses API, against the fake OpenAI-compatible upstream: the model calls the tool,
the SDK runs it and sends its output back, the model answers with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

agents = pytest.importorskip("agents", reason="openai-agents is not installed (the dev extra has it)")


@pytest.fixture(scope="module")
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def gateway(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as upstream, dragoman_server({"backends": [
            {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "models": ["gpt-agent"]}]}) as server:
        yield server


@pytest.mark.parametrize("streamed", [False, True])
async def test_agent_turn_with_a_function_tool(gateway: ServerThread, fake: FakeOpenAI, streamed: bool) -> None:
    agents.set_tracing_disabled(True)  # no trace export to OpenAI
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    client = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=10)
    agent = agents.Agent(name="forecaster", instructions="Answer with the tool.", tools=[get_weather],
                         model=agents.OpenAIResponsesModel(model="up/gpt-agent", openai_client=client))
    if streamed:
        result = agents.Runner.run_streamed(agent, "Weather in Paris?")
        async for _ in result.stream_events():
            pass
    else:
        result = await agents.Runner.run(agent, "Weather in Paris?")
    assert seen == ["Paris"]
    assert result.final_output == "Tool said: sunny in Paris"
    sent = fake.last().body
    assert sent["messages"][0] == {"role": "system", "content": "Answer with the tool."}
    assert sent["messages"][-1]["role"] == "tool"
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    await client.close()
