"""The Anthropic Messages dialect over real HTTP, driven by the official ``anthropic`` SDK.

Backends: ``echo`` (reached through the glob alias ``claude-sonnet-*``, as Claude Code's model
names are) and an OpenAI-compatible fake upstream (tests/fakes/openai_upstream.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PNG_B64 = base64.b64encode(PNG).decode()
SONNET = "claude-sonnet-9"  # a Claude Code style name, mapped by the alias glob to test/echo
WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}


@pytest.fixture(scope="module")
def gateway(upstream: ServerThread) -> Iterator[ServerThread]:
    config = {
        "backends": [
            {"name": "test", "type": "echo", "models": ["echo"]},
            {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "forward",
             "models": ["gpt-*"]},
        ],
        "aliases": {"claude-sonnet-*": "test/echo", "claude-haiku-*": "up/gpt-test"},
        "routing": {"retries": 0},
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 2},
    }
    with dragoman_server(config) as server:
        yield server


@pytest.fixture()
def client(gateway: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def raw_events(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """(event name, parsed data) of every SSE frame, asserting each carries its ``event:`` line."""
    events = []
    with httpx.stream("POST", f"{url}/v1/messages", json=body, timeout=10,
                      headers={"anthropic-version": "2023-06-01", **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = frame.split("\n")
        assert lines[0].startswith("event: "), frame
        assert lines[1].startswith("data: "), frame
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        events.append((name, data))
    return events


# ---------------------------------------------------------------------------------------- text


def test_text_non_streaming(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=SONNET, max_tokens=100, messages=user("Hello  wide world"))
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == SONNET
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello  wide world"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 3)
    assert message.usage.cache_read_input_tokens == 0


def test_text_streaming_helpers(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=SONNET, max_tokens=100, messages=user("one two three")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "one two three" and len(pieces) == 3
    assert final.content[0].text == "one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 3)


def test_alias_glob_routes_claude_names(gateway: ServerThread) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", timeout=10,
                          json={"model": "claude-sonnet-4-20250514", "max_tokens": 10, "messages": user("hi")})
    assert response.status_code == 200
    assert response.headers["x-dragoman-backend"] == "test/echo"
    assert response.headers["request-id"]
    assert response.json()["model"] == "claude-sonnet-4-20250514"


def test_raw_event_sequence(gateway: ServerThread) -> None:
    events = raw_events(gateway.url, {"model": SONNET, "max_tokens": 50, "stream": True,
                                      "thinking": {"type": "enabled", "budget_tokens": 1024},
                                      "messages": user("two words")})
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"]["input_tokens"] == 2 and start["model"] == SONNET
    blocks = [(d["index"], d["content_block"]) for n, d in events if n == "content_block_start"]
    assert blocks[0] == (0, {"type": "thinking", "thinking": "", "signature": ""})
    assert blocks[1] == (1, {"type": "text", "text": ""})
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    thinking_stop = names.index("content_block_stop")
    assert events[thinking_stop - 1][1]["delta"]["type"] == "signature_delta"  # just before the stop
    assert {d["type"] for d in deltas} == {"thinking_delta", "signature_delta", "text_delta"}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5 and delta["usage"]["input_tokens"] == 2


def test_anthropic_version_is_optional_and_any_value(gateway: ServerThread) -> None:
    body = {"model": SONNET, "max_tokens": 10, "messages": user("hi")}
    for headers in ({}, {"anthropic-version": "2023-06-01"}, {"anthropic-version": "2099-99-99"}):
        response = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------------- tools


def test_tool_use_then_tool_result(client: anthropic.Anthropic) -> None:
    messages: list[dict[str, Any]] = user('!tool get_weather {"city": "Paris"}')
    first = client.messages.create(model=SONNET, max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    assert first.stop_reason == "tool_use"
    tool = first.content[-1]
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "Paris"}
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id,
                                               "content": "18 degrees and sunny"}]}]
    second = client.messages.create(model=SONNET, max_tokens=100, tools=[WEATHER_TOOL], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "18 degrees and sunny"


def test_tool_use_streaming(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=SONNET, max_tokens=100, tools=[WEATHER_TOOL],
                                messages=user('!tool get_weather {"city": "Paris", "days": [1, 2]}')) as stream:
        final = stream.get_final_message()
    tool = final.content[0]
    assert tool.type == "tool_use" and tool.input == {"city": "Paris", "days": [1, 2]}
    assert tool.id
    assert final.stop_reason == "tool_use"


def test_tool_result_blocks_with_image_and_error(client: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": "use the camera"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "camera", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [
            {"type": "text", "text": "lens cap on"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}]}]},
    ]
    message = client.messages.create(model=SONNET, max_tokens=50, messages=messages)
    assert message.content[0].text == "lens cap on"


def test_tools_through_openai_backend(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    with client.messages.stream(model="up/gpt-tools", max_tokens=100, tools=[WEATHER_TOOL],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=user("weather?")) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in final.content] == [
        ("tool_use", "get_weather", {"city": "Paris"}), ("tool_use", "get_time", {"tz": "UTC"})]
    assert [b.id for b in final.content] == ["call_a", "call_b"]
    assert final.stop_reason == "tool_use"
    sent = fake.last().body
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]


def test_tool_choice_by_name_and_tool_results_sent_upstream(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_9", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "cold"},
                                     {"type": "text", "text": "and tomorrow?"}]},
    ]
    client.messages.create(model="up/gpt-test", max_tokens=100, tools=[WEATHER_TOOL],
                           tool_choice={"type": "tool", "name": "get_weather"}, messages=messages)
    sent = fake.last().body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == "toolu_9"
    assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_9", "content": "cold"}


# -------------------------------------------------------------------------------- thinking


def test_thinking_with_signature_stream_and_not_agree(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": SONNET, "max_tokens": 2048, "messages": user("deep thought"),
                              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        thinking = message.content[0]
        assert thinking.type == "thinking"
        assert thinking.thinking == "Thinking: deep thought"
        assert thinking.signature.startswith("echo-")
        assert message.content[1].text == "deep thought"
    assert whole.content[0].signature == streamed.content[0].signature


def test_thinking_from_openai_backend_has_empty_signature(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="up/gpt-reason", max_tokens=100, messages=user("why?"),
                                     thinking={"type": "adaptive"})
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."
    assert message.content[0].signature == ""


def test_thinking_settings_reach_the_backend(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    client.messages.create(model="up/gpt-test", max_tokens=9000, messages=user("hi"),
                           thinking={"type": "enabled", "budget_tokens": 8000})
    assert fake.last().body["reasoning_effort"] == "medium"
    client.messages.create(model="up/gpt-test", max_tokens=100, messages=user("hi"), thinking={"type": "disabled"})
    assert fake.last().body["reasoning_effort"] == "none"
    client.messages.create(model="up/gpt-test", max_tokens=100, messages=user("hi"),
                           thinking={"type": "between_tools"})  # newer types: on, model's own budget
    assert fake.last().body["reasoning_effort"] == "medium"


# -------------------------------------------------------------------------- images, stops


def test_images_base64_and_url(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
               {"type": "text", "text": "what is this?"}]
    message = client.messages.create(model=SONNET, max_tokens=50,
                                     messages=[{"role": "user", "content": content}])
    assert message.content[0].text == "what is this?"
    client.messages.create(model="up/gpt-test", max_tokens=50,
                           messages=[{"role": "user", "content": content}])
    parts = fake.last().body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{PNG_B64}"
    assert parts[1]["image_url"]["url"] == "https://example.com/cat.png"


def test_stop_sequences(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": SONNET, "max_tokens": 50, "stop_sequences": ["STOP", "never"],
                              "messages": user("one two STOP three")}
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"
        assert message.content[0].text == "one two "


def test_max_tokens_stop(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=SONNET, max_tokens=2, messages=user("one two three four"))
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "one two "


def test_request_fields_reach_openai_backend(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    client.messages.create(
        model="claude-haiku-1", max_tokens=77, messages=user("hi"), stop_sequences=["END"],
        metadata={"user_id": "user-42"}, extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 5},
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}])
    sent = fake.last().body
    assert sent["model"] == "gpt-test" and sent["max_tokens"] == 77
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["user"]) == (0.3, 0.9, ["END"], "user-42")
    assert sent["messages"][:2] == [{"role": "system", "content": "Be brief."},
                                    {"role": "system", "content": "Be kind."}]
    client.messages.create(model="claude-haiku-1", max_tokens=5, messages=user("hi"), system="Plain system.")
    sent = fake.last().body
    assert sent["temperature"] == 1.0  # Anthropic's documented default, made explicit
    assert sent["messages"][0] == {"role": "system", "content": "Plain system."}


def test_system_turns_in_messages(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    client.messages.create(model="up/gpt-test", max_tokens=5, messages=[
        {"role": "system", "content": [{"type": "text", "text": "Rules."}]}, *user("hi")])
    assert fake.last().body["messages"][0] == {"role": "system", "content": "Rules."}


def test_output_config_json_schema(gateway: ServerThread, fake: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    response = httpx.post(f"{gateway.url}/v1/messages", timeout=10, json={
        "model": "up/gpt-test", "max_tokens": 20, "messages": user("json please"),
        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert response.status_code == 200, response.text
    assert fake.last().body["response_format"]["json_schema"]["schema"] == schema


# ----------------------------------------------------------------------------- credentials


def test_x_api_key_and_bearer_are_forwarded(gateway: ServerThread, fake: FakeOpenAI) -> None:
    body = {"model": "up/gpt-test", "max_tokens": 10, "messages": user("hi")}
    response = httpx.post(f"{gateway.url}/v1/messages", json=body, timeout=10,
                          headers={"x-api-key": "sk-ant-from-header", "anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    assert fake.last().headers["authorization"] == "Bearer sk-ant-from-header"
    sdk = anthropic.Anthropic(base_url=gateway.url, auth_token="sk-bearer-token", max_retries=0, timeout=10)
    sdk.messages.create(model="up/gpt-test", max_tokens=10, messages=user("hi"))
    assert fake.last().headers["authorization"] == "Bearer sk-bearer-token"
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=10,
                              default_headers={"Authorization": "", "x-api-key": "sk-default-header"})
    sdk.messages.create(model="up/gpt-test", max_tokens=10, messages=user("hi"))
    assert fake.last().headers["authorization"] == "Bearer sk-default-header"


# --------------------------------------------------------------------------- upstream errors


def test_upstream_rate_limit_keeps_status_and_retry_after(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="up/gpt-error-429", max_tokens=10, messages=user("hi"))
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert "fake upstream failure 429" in caught.value.message


def test_upstream_503_is_overloaded(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="up/gpt-error-503", max_tokens=10, messages=user("hi"))
    assert caught.value.status_code == 503
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_midstream_error_is_an_error_event(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    events = raw_events(gateway.url, {"model": "up/gpt-midstream-error", "max_tokens": 10, "stream": True,
                                      "messages": user("hi")})
    name, data = events[-1]
    assert name == "error"
    assert data == {"type": "error", "error": {"type": "api_error", "message": "upstream exploded"}}
    assert "message_stop" not in [n for n, _ in events]
    with pytest.raises(anthropic.APIStatusError, match="upstream exploded"), \
            client.messages.stream(model="up/gpt-midstream-error", max_tokens=10, messages=user("hi")) as stream:
        stream.get_final_message()


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": SONNET, "messages": user("hi")}, "max_tokens: field required"),
    ({"model": SONNET, "max_tokens": "many", "messages": user("hi")}, "max_tokens"),
    ({"model": SONNET, "max_tokens": 0, "messages": user("hi")}, "max_tokens"),
    ({"model": SONNET, "max_tokens": 5, "messages": "hi"}, "messages"),
    ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"model": SONNET, "max_tokens": 5, "messages": []}, "messages"),
    ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "system", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}, "not supported in system"),
    ({"model": SONNET, "max_tokens": 5, "temperature": 1.5, "messages": user("hi")}, "temperature"),
    ({"model": SONNET, "max_tokens": 5, "messages": user("hi"),
      "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}, "server tool 'web_search'"),
    ({"model": SONNET, "max_tokens": 5, "messages": user("hi"), "tools": [{"name": "t"}]}, "input_schema"),
    ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
     "'document' is not supported"),
    ({"model": SONNET, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}]}]}, "base64"),
    ({"model": SONNET, "max_tokens": 5, "messages": user("hi"),
      "tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER_TOOL]}, "unknown tool"),
])
def test_invalid_requests_are_400_before_the_stream(gateway: ServerThread, body: dict[str, Any],
                                                    fragment: str) -> None:
    for stream in (False, True):
        response = httpx.post(f"{gateway.url}/v1/messages", json={**body, "stream": stream}, timeout=10)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert fragment in error["error"]["message"]


def test_invalid_json_is_400(gateway: ServerThread) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", content=b'{"model": ', timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_with_stream_true(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=SONNET, max_tokens=10, stream=True, messages=["hi"])
    with pytest.raises(anthropic.BadRequestError, match="temperature"), client.messages.stream(
            model=SONNET, max_tokens=10, extra_body={"temperature": 3}, messages=user("hi")) as stream:
        stream.get_final_message()


def test_unknown_model_is_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="gpt-nope", max_tokens=10, messages=user("hi"))
    assert caught.value.body["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------------ count_tokens, models


def test_count_tokens_exact_and_estimated(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=SONNET, messages=user("three little words"))
    assert counted.input_tokens == 3
    response = httpx.post(f"{gateway.url}/v1/messages/count_tokens", timeout=10,
                          json={"model": SONNET, "system": "be nice", "messages": user("three little words")})
    assert response.json() == {"input_tokens": 5}
    assert response.headers["x-dragoman-token-count"] == "exact"
    response = httpx.post(f"{gateway.url}/v1/messages/count_tokens", timeout=10,
                          json={"model": "up/gpt-test", "messages": user("a" * 400)})
    assert response.json()["input_tokens"] == 100
    assert response.headers["x-dragoman-token-count"] == "estimated"
    response = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json={"model": SONNET}, timeout=10)
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]


def test_models_in_both_shapes(gateway: ServerThread, client: anthropic.Anthropic) -> None:
    listed = list(client.models.list(limit=2))  # pages through has_more / after_id
    ids = [m.id for m in listed]
    assert "test/echo" in ids and "up/gpt-test" in ids
    assert all(m.type == "model" and m.display_name for m in listed)
    assert len(ids) == len(set(ids))
    openai_shape = httpx.get(f"{gateway.url}/v1/models", timeout=10).json()
    assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"
    page = httpx.get(f"{gateway.url}/v1/models?limit=1", headers={"anthropic-version": "2023-06-01"},
                     timeout=10).json()
    assert page["has_more"] is True and page["first_id"] == page["last_id"] == page["data"][0]["id"]
    model = client.models.retrieve(SONNET)
    assert model.id == SONNET and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("nope-model")


# ---------------------------------------------------------------------------- cancellation


def test_client_disconnect_mid_stream_cancels_the_upstream(gateway: ServerThread, fake: FakeOpenAI) -> None:
    before = fake.disconnects
    body = {"model": "up/gpt-slow", "max_tokens": 100, "stream": True, "messages": user("a long answer " * 5)}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, timeout=10) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break  # leave after the first token
    assert wait_until(lambda: fake.disconnects > before, timeout=5), "upstream stream was not cancelled"
    assert wait_until(lambda: fake.open_streams == 0, timeout=5)
    # the gateway still serves afterwards
    response = httpx.post(f"{gateway.url}/v1/messages", timeout=10,
                          json={"model": SONNET, "max_tokens": 5, "messages": user("still here")})
    assert response.json()["content"][0]["text"] == "still here"
