"""The Anthropic backend against a fake Anthropic API, driven by the ``openai``, ``anthropic`` and
``ollama`` clients: every dialect reaches Claude models, thinking signatures survive the round
trip, and upstream failures arrive in each client's own error shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.fakes.anthropic_upstream import MODELS, REDACTED, SIGNATURE, THINKING, TOOL_ID, FakeAnthropic
from tests.servers import ServerThread, dragoman_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    yield FakeAnthropic()


@pytest.fixture(scope="module")
def upstream(fake: FakeAnthropic) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(upstream: ServerThread) -> Iterator[ServerThread]:
    config = {
        "backends": [
            {"name": "claude", "type": "anthropic", "base_url": upstream.url, "api_key": "sk-ant-test",
             "beta": ["beta-one", "beta-two"], "models": ["claude-*"]},
            {"name": "fwd", "type": "anthropic", "base_url": f"{upstream.url}/v1", "api_key": "forward",
             "auth": "bearer", "models": ["claude-echo"], "default_max_tokens": 333},
        ],
        "routing": {"retries": 0},
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 2},
    }
    with dragoman_server(config) as server:
        yield server


@pytest.fixture()
def oai(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0, timeout=10)


@pytest.fixture()
def claude(gateway: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------ models, headers


def test_discovery_follows_pages(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {f"claude/{m}" for m in MODELS} <= ids
    pages = [r for r in fake.requests if r.path == "/v1/models"]
    assert any(r.query.get("after_id") for r in pages)
    assert pages[0].headers["x-api-key"] == "sk-ant-test"
    assert pages[0].headers["anthropic-version"] == "2023-06-01"


def test_openai_text_and_request_shape(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    response = oai.chat.completions.create(
        model="claude-text", temperature=1.7, stop=["X"], user="u1",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}])
    choice = response.choices[0]
    assert choice.message.content == "Hello from Claude" and choice.finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (30, 15)
    assert response.usage.prompt_tokens_details.cached_tokens == 5
    sent = fake.last()
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "beta-one,beta-two"
    body = sent.body
    assert body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 4096  # default_max_tokens: Anthropic requires one
    assert body["temperature"] == 1.0  # clamped from 1.7 to Anthropic's 0..1
    assert body["stop_sequences"] == ["X"] and body["metadata"] == {"user_id": "u1"}
    assert body["stream"] is True and "thinking" not in body


@pytest.mark.parametrize("model", ["claude-text", "claude-split"])
def test_openai_streaming_text(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.chat.completions.create(model=model, messages=user("hi"), stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Claude"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


def test_forwarded_key_as_bearer(gateway: ServerThread, fake: FakeAnthropic) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-ant-client", max_retries=0, timeout=10)
    response = client.chat.completions.create(model="fwd/claude-echo", messages=user("hello"))
    assert response.choices[0].message.content == "Echo: hello"
    sent = fake.last()
    assert sent.headers["authorization"] == "Bearer sk-ant-client" and "x-api-key" not in sent.headers
    assert sent.body["max_tokens"] == 333


# ------------------------------------------------------------------------------------ tools


def test_openai_tool_calls(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    response = oai.chat.completions.create(model="claude-tools", messages=user("weather?"), tools=[WEATHER],
                                           tool_choice="required", parallel_tool_calls=False)
    message = response.choices[0].message
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (TOOL_ID, "get_weather", ARGUMENTS)
    assert response.choices[0].finish_reason == "tool_calls"
    body = fake.last().body
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER["function"]["parameters"]}]


def test_openai_tool_calls_streaming(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="claude-tools", messages=user("weather?"), tools=[WEATHER],
                                              stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == TOOL_ID and calls[0].function.name == "get_weather"
    assert "".join(tc.function.arguments or "" for tc in calls) == ARGUMENTS
    assert len(calls) > 2  # fragments, as they came


def test_openai_tool_results_become_one_user_turn(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "weather in two cities?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"A"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "20C"},
        {"role": "user", "content": "thanks"},
    ]
    response = oai.chat.completions.create(model="claude/claude-echo", messages=messages, tools=[WEATHER])
    assert response.choices[0].message.content == "Result: 18C"
    turns = fake.last().body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "A"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]  # bad JSON: closed prefix
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                                   {"type": "tool_result", "tool_use_id": "call_2", "content": "20C"},
                                   {"type": "text", "text": "thanks"}]


# --------------------------------------------------------------------------------- thinking


def _thinking_turn_two(first: dict[str, Any], tool_call_id: str) -> list[Any]:
    return [{"role": "user", "content": "weather in Paris?"}, first,
            {"role": "tool", "tool_call_id": tool_call_id, "content": "18C"}]


def test_openai_thinking_signature_round_trip(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    response = oai.chat.completions.create(model="claude-think", messages=user("weather in Paris?"),
                                           tools=[WEATHER], reasoning_effort="low")
    body = fake.last().body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and body["max_tokens"] == 4096
    message = response.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"] == THINKING
    assert message["reasoning_details"] == [{"type": "reasoning.text", "text": THINKING, "signature": SIGNATURE,
                                             "index": 0}]
    assert message["tool_calls"][0]["id"] == TOOL_ID
    second = oai.chat.completions.create(model="claude-think", tools=[WEATHER], reasoning_effort="low",
                                         messages=_thinking_turn_two(message, TOOL_ID))
    assert second.choices[0].message.content == "verified: 18C"  # the fake checked the thinking block


def test_openai_thinking_signature_round_trip_streaming(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="claude-think", messages=user("weather in Paris?"),
                                              tools=[WEATHER], reasoning_effort="low", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    details = [x for d in deltas for x in (getattr(d, "reasoning_details", None) or [])]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert reasoning == THINKING
    assert details == [{"type": "reasoning.text", "text": THINKING, "signature": SIGNATURE, "index": 0}]
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assistant = {"role": "assistant", "content": None, "reasoning_details": details,
                 "tool_calls": [{"id": calls[0].id, "type": "function",
                                 "function": {"name": "get_weather", "arguments": arguments}}]}
    second = list(oai.chat.completions.create(model="claude-think", tools=[WEATHER], reasoning_effort="low",
                                              stream=True, messages=_thinking_turn_two(assistant, TOOL_ID)))
    assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "verified: 18C"


def test_anthropic_sdk_thinking_round_trip(claude: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    kwargs: dict[str, Any] = {"model": "claude-think", "max_tokens": 4000, "tools": tools,
                              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    with claude.messages.stream(messages=user("weather in Paris?"), **kwargs) as stream:
        first = stream.get_final_message()
    assert fake.last().body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert fake.last().body["max_tokens"] == 4000
    thinking, tool = first.content
    assert thinking.type == "thinking" and thinking.signature == SIGNATURE and thinking.thinking == THINKING
    assert tool.type == "tool_use" and tool.input == {"city": "Paris", "unit": "celsius"}
    messages = [*user("weather in Paris?"),
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}]}]
    second = claude.messages.create(messages=messages, **kwargs)
    assert second.content[0].text == "verified: 18C"


def test_cache_marks_and_adaptive_thinking_pass_through(claude: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    ephemeral = {"type": "ephemeral"}
    claude.messages.create(
        model="claude-text", max_tokens=10, cache_control=ephemeral,
        system=[{"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Long instructions.", "cache_control": ephemeral}],
        tools=[{"name": "Read", "input_schema": {"type": "object"}, "cache_control": ephemeral}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": ephemeral},
                                               {"type": "text", "text": "there"}]}])
    body = fake.last().body
    assert body["system"] == [{"type": "text", "text": "You are Claude Code."},
                              {"type": "text", "text": "Long instructions.", "cache_control": ephemeral}]
    assert body["tools"][0]["cache_control"] == ephemeral
    assert body["messages"][0]["content"] == [{"type": "text", "text": "hi", "cache_control": ephemeral},
                                              {"type": "text", "text": "there"}]
    assert body["cache_control"] == ephemeral
    claude.messages.create(model="claude-text", max_tokens=10, messages=user("hi"),
                           thinking={"type": "adaptive", "display": "omitted"})
    body = fake.last().body
    assert body["thinking"] == {"type": "adaptive", "display": "omitted"} and body["max_tokens"] == 10


def test_redacted_thinking_reaches_every_dialect(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    message = oai.chat.completions.create(model="claude-redacted", messages=user("hi")).choices[0].message
    assert message.content == "Done."
    assert message.model_dump()["reasoning_details"] == [{"type": "reasoning.encrypted", "data": REDACTED,
                                                          "index": 0}]
    reply = claude.messages.create(model="claude-redacted", max_tokens=100, messages=user("hi"))
    assert reply.content[0].type == "redacted_thinking" and reply.content[0].data == REDACTED


def test_thinking_budget_raises_max_tokens_and_drops_sampling(oai: openai.OpenAI, fake: FakeAnthropic) -> None:
    oai.chat.completions.create(model="claude-text", messages=user("hi"), reasoning_effort="high", max_tokens=100,
                                temperature=0.2, top_p=0.5)
    body = fake.last().body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert body["max_tokens"] == 16484
    assert "temperature" not in body and "top_p" not in body


# ---------------------------------------------------------------------------------- stops


def test_max_tokens_and_stop_sequence(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    response = oai.chat.completions.create(model="claude-max", messages=user("hi"), max_tokens=7)
    assert response.choices[0].finish_reason == "length"
    message = claude.messages.create(model="claude-max", max_tokens=7, messages=user("hi"))
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 7
    message = claude.messages.create(model="claude-stop", max_tokens=50, stop_sequences=["3"], messages=user("count"))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "3")


def test_truncated_upstream_stream_is_an_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(model="claude-truncated", messages=user("hi"))
    assert caught.value.status_code == 502
    with pytest.raises(openai.APIError, match="closed the stream"):
        list(oai.chat.completions.create(model="claude-truncated", messages=user("hi"), stream=True))


# ---------------------------------------------------------------------------------- errors


def test_errors_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as overloaded:
        oai.chat.completions.create(model="claude-error-529", messages=user("hi"))
    assert overloaded.value.status_code == 503 and "Overloaded" in overloaded.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="claude-error-429", messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == "7"
    assert "per-minute rate limit" in limited.value.message
    with pytest.raises(openai.BadRequestError, match="roles must alternate"):
        oai.chat.completions.create(model="claude-error-400", messages=user("hi"))
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(oai.chat.completions.create(model="claude-midstream-error", messages=user("hi"), stream=True))


def test_errors_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        claude.messages.create(model="claude-error-529", max_tokens=10, messages=user("hi"))
    assert overloaded.value.status_code == 529
    assert overloaded.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                                     "request_id": overloaded.value.body["request_id"]}
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="claude-error-429", max_tokens=10, messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.BadRequestError, match="roles must alternate"):
        claude.messages.create(model="claude-error-400", max_tokens=10, messages=user("hi"))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded") as midstream, \
            claude.messages.stream(model="claude-midstream-error", max_tokens=10, messages=user("hi")) as stream:
        stream.get_final_message()
    assert midstream.value.body["error"]["type"] == "overloaded_error"


def test_count_tokens_is_exact_from_anthropic(gateway: ServerThread, fake: FakeAnthropic) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages/count_tokens", timeout=10,
                          json={"model": "claude-text", "system": "s", "messages": user("hi")})
    assert response.json() == {"input_tokens": 42}
    assert response.headers["x-dragoman-token-count"] == "exact"
    sent = fake.last("/v1/messages/count_tokens").body
    assert sent["system"] == "s" and "max_tokens" not in sent and "stream" not in sent


# ---------------------------------------------------------------------------------- ollama


@pytest.fixture()
def ollama_client(gateway: ServerThread) -> ollama.Client:
    if httpx.post(f"{gateway.url}/api/chat", json={}, timeout=10).status_code == 404:
        pytest.skip("the Ollama dialect (/api/chat) is not there yet")
    return ollama.Client(host=gateway.url, timeout=10)


def test_ollama_text_and_tools(ollama_client: ollama.Client) -> None:
    assert ollama_client.chat(model="claude-text", messages=user("hi")).message.content == "Hello from Claude"
    streamed = "".join(part.message.content or "" for part in
                       ollama_client.chat(model="claude-text", messages=user("hi"), stream=True))
    assert streamed == "Hello from Claude"
    response = ollama_client.chat(model="claude-tools", messages=user("weather?"), tools=[WEATHER])
    calls = response.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", json.loads(ARGUMENTS))]
    messages: list[Any] = [*user("weather?"), response.message,
                           {"role": "tool", "content": "18C", "tool_name": "get_weather"}]
    assert ollama_client.chat(model="claude/claude-echo", messages=messages, tools=[WEATHER]).message.content \
        == "Result: 18C"


def test_ollama_thinking_and_length(ollama_client: ollama.Client, fake: FakeAnthropic) -> None:
    response = ollama_client.chat(model="claude-think", messages=user("weather in Paris?"), tools=[WEATHER],
                                  think=True)
    assert response.message.thinking == THINKING
    assert fake.last().body["thinking"]["type"] == "enabled"
    # Ollama's wire has no signature field: the thinking comes back unsigned, so dragoman leaves it
    # (and, for this tool turn, thinking) out upstream rather than have Anthropic refuse the request.
    messages: list[Any] = [*user("weather?"), response.message,
                           {"role": "tool", "content": "18C", "tool_name": "get_weather"}]
    ollama_client.chat(model="claude/claude-echo", messages=messages, tools=[WEATHER], think=True)
    sent = fake.last().body
    assert "thinking" not in sent and sent["messages"][1]["content"][0]["type"] == "tool_use"
    response = ollama_client.chat(model="claude-max", messages=user("hi"), options={"num_predict": 7})
    assert response.done_reason == "length"


def test_ollama_errors(ollama_client: ollama.Client) -> None:
    for model, status, fragment in (("claude-error-529", 503, "Overloaded"),
                                    ("claude-error-429", 429, "rate limit"),
                                    ("claude-error-400", 400, "roles must alternate")):
        with pytest.raises(ollama.ResponseError) as caught:
            ollama_client.chat(model=model, messages=user("hi"))
        assert caught.value.status_code == status and fragment in caught.value.error
