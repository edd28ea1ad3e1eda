"""``type: openai-responses`` (or ``type: openai`` with ``api: responses``): a model served upstream
only through ``/v1/responses``, reached by
every client dialect (official ``openai``, ``anthropic`` and ``ollama`` SDKs), against the fake
Responses upstream (tests/fakes/responses_upstream.py), which records what it got."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import ollama
import openai
import pytest

from dragoman.config import ConfigError
from tests.fakes.responses_upstream import FakeResponsesUpstream
from tests.servers import ServerThread, dragoman_server

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def fake() -> FakeResponsesUpstream:
    return FakeResponsesUpstream()


@pytest.fixture(scope="module")
def gateway(fake: FakeResponsesUpstream) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as upstream, dragoman_server({
            "backends": [{"name": "ru", "type": "openai-responses", "base_url": f"{upstream.url}/v1",
                          "api_key": "upstream-secret", "models": ["resp-*"]},
                         {"name": "ra", "type": "openai", "api": "responses", "base_url": f"{upstream.url}/v1",
                          "api_key": "upstream-secret", "models": ["resp-*"]}],
            "timeouts": {"connect": 2, "first_byte": 2, "idle": 1}}) as server:
        yield server


@pytest.fixture()
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=10)


def test_chat_completions_client(client: openai.OpenAI, fake: FakeResponsesUpstream) -> None:
    answer = client.chat.completions.create(model="ru/resp-text", messages=[
        {"role": "system", "content": "rules"}, {"role": "user", "content": "hello"}], max_tokens=40, temperature=0.3)
    assert answer.choices[0].message.content == "You said: hello"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 5)
    assert answer.usage.prompt_tokens_details is not None and answer.usage.prompt_tokens_details.cached_tokens == 4
    sent = fake.last()
    assert sent.headers["authorization"] == "Bearer upstream-secret"
    assert sent.body["input"] == [
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rules"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}]
    assert (sent.body["stream"], sent.body["store"], sent.body["max_output_tokens"], sent.body["temperature"]) == (
        True, False, 40, 0.3)
    chunks = list(client.chat.completions.create(model="ru/resp-text", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hi"


def test_chat_completions_tool_round_trip(client: openai.OpenAI, fake: FakeResponsesUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}]
    first = client.chat.completions.create(model="ru/resp-agent", messages=[{"role": "user", "content": "go"}],
                                           tools=tools)  # type: ignore[arg-type]
    [call] = first.choices[0].message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == ("call_up1", "get_weather", '{"city": "Paris"}')
    assert first.choices[0].finish_reason == "tool_calls"
    assert fake.last().body["tools"][0]["name"] == "get_weather"
    second = client.chat.completions.create(model="ru/resp-agent", tools=tools, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "go"}, first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": "call_up1", "content": "rain"}])
    assert second.choices[0].message.content == "Tool said: rain"
    assert fake.last().body["input"][1:] == [
        {"type": "function_call", "call_id": "call_up1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_up1", "output": "rain"}]


def test_anthropic_client(gateway: ServerThread) -> None:
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=10)
    message = sdk.messages.create(model="ru/resp-text", max_tokens=50, system="be kind",
                                  messages=[{"role": "user", "content": "bonjour"}])
    assert message.content[0].type == "text" and message.content[0].text == "You said: bonjour"
    with sdk.messages.stream(model="ru/resp-reason", max_tokens=50, messages=[{"role": "user", "content": "x"}],
                             thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        final = stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking == "First thought.\n\nSecond thought."
    assert thinking.signature == "enc-1"
    assert text.type == "text" and text.text == "Reasoned answer."


def test_ollama_client(gateway: ServerThread) -> None:
    answer = ollama.Client(host=gateway.url).chat(model="ru/resp-text", messages=[{"role": "user", "content": "hej"}],
                                                  stream=False)
    assert answer.message.content == "You said: hej"
    assert answer.done_reason == "stop"


def test_responses_client_with_hosted_custom_and_namespace_tools(client: openai.OpenAI,
                                                                 fake: FakeResponsesUpstream) -> None:
    raw = client.responses.with_raw_response.create(model="ru/resp-search", input="news?",
                                                    tools=[{"type": "web_search"}, WEATHER])
    assert "x-dragoman-dropped-tools" not in raw.headers
    assert raw.parse().output_text == "I searched the web."
    assert fake.last().body["tools"] == [{"type": "web_search"}, WEATHER]
    sql = {"type": "custom", "name": "run_sql", "format": {"type": "text"}}
    custom = client.responses.create(model="ru/resp-agent", input="query", tools=[sql])
    [call] = custom.output
    assert call.type == "custom_tool_call" and (call.name, call.input) == ("run_sql", "SELECT 1")
    assert fake.last().body["tools"] == [sql]  # the upstream gets the custom tool as such
    answer = client.responses.create(model="ru/resp-agent", tools=[sql], input=[
        {"role": "user", "content": "query"},
        {"type": "custom_tool_call", "call_id": "call_up1", "name": "run_sql", "input": "SELECT 1"},
        {"type": "custom_tool_call_output", "call_id": "call_up1", "output": "1 row"}])
    assert answer.output_text == "Tool said: 1 row"
    assert fake.last().body["input"][1] == {"type": "custom_tool_call", "call_id": "call_up1", "name": "run_sql",
                                            "input": "SELECT 1"}
    crm = {"type": "namespace", "name": "crm", "description": "CRM", "tools": [WEATHER]}
    [namespaced] = client.responses.create(model="ru/resp-agent", input="x", tools=[crm]).output
    assert namespaced.type == "function_call" and (namespaced.namespace, namespaced.name) == ("crm", "get_weather")


def test_reasoning_goes_back_encrypted(client: openai.OpenAI, fake: FakeResponsesUpstream) -> None:
    first = client.responses.create(model="ru/resp-reason", input="think", reasoning={"effort": "low",
                                                                                       "summary": "auto"},
                                    include=["reasoning.encrypted_content"])
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == "enc-1"
    assert fake.last().body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert fake.last().body["include"] == ["reasoning.encrypted_content"]
    client.responses.create(model="ru/resp-text", input="more", previous_response_id=first.id)
    replayed = fake.last().body["input"]
    assert replayed[1]["type"] == "reasoning" and replayed[1]["encrypted_content"] == "enc-1"


def test_incomplete_failed_and_cut_streams(client: openai.OpenAI) -> None:
    long = client.responses.create(model="ru/resp-long", input="x")
    assert long.status == "incomplete"
    assert long.incomplete_details is not None and long.incomplete_details.reason == "max_output_tokens"
    chat = client.chat.completions.create(model="ru/resp-long", messages=[{"role": "user", "content": "x"}])
    assert chat.choices[0].finish_reason == "length"
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="ru/resp-fail", messages=[{"role": "user", "content": "x"}])
    assert "the fake model fell over" in caught.value.message
    with pytest.raises(openai.InternalServerError) as cut:
        client.chat.completions.create(model="ru/resp-cut", messages=[{"role": "user", "content": "x"}])
    assert "no response.completed" in cut.value.message
    with client.responses.stream(model="ru/resp-cut", input="x") as stream:
        events = [e.type for e in stream]
    assert events[-1] == "response.failed"


def test_raw_completions_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="ru/resp-text", prompt="x")
    assert "no raw text completions" in caught.value.message


def test_type_openai_with_api_responses_calls_the_responses_api(client: openai.OpenAI,
                                                                 fake: FakeResponsesUpstream) -> None:
    answer = client.chat.completions.create(model="ra/resp-text", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "You said: hello"
    sent = fake.last()
    assert sent.path == "/v1/responses"
    assert (sent.body["store"], sent.body["input"][0]["content"][0]["text"]) == (False, "hello")
    # hosted tools reach this upstream, as for type: openai-responses
    raw = client.responses.with_raw_response.create(model="ra/resp-text", input="hi",
                                                    tools=[{"type": "web_search"}])
    assert "x-dragoman-dropped-tools" not in raw.headers
    assert raw.parse().output_text == "You said: hi"
    assert fake.last().body["tools"] == [{"type": "web_search"}]


def test_input_tokens_are_counted_by_the_upstream(client: openai.OpenAI, fake: FakeResponsesUpstream,
                                                  gateway: ServerThread) -> None:
    raw = client.responses.input_tokens.with_raw_response.count(model="ru/resp-text", input="hello",
                                                                instructions="rules", tools=[WEATHER])
    assert raw.headers["x-dragoman-token-count"] == "exact"
    assert raw.parse().input_tokens == 1002  # the fake's count: 1000 + two input items
    sent = fake.requests[-1]
    assert sent.path == "/v1/responses/input_tokens"
    assert sent.headers["authorization"] == "Bearer upstream-secret"
    assert sent.body["model"] == "resp-text" and sent.body["tools"][0]["name"] == "get_weather"
    assert not {"stream", "store", "include"} & set(sent.body)
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=10)
    counted = sdk.messages.count_tokens(model="ra/resp-text", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 1001


def test_api_must_be_chat_or_responses() -> None:
    entry = {"name": "bad", "type": "openai", "api": "completions", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(ConfigError, match=r"\(bad\)\.api: Input should be 'chat' or 'responses'"), \
            dragoman_server({"backends": [entry]}):
        pass
