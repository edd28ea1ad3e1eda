"""Exactness details checked against the specs, over real HTTP with each dialect's official SDK
(and httpx where the raw bytes or headers matter):

* OpenAI answers and chunks never carry ``system_fingerprint: null`` (the spec types it a string);
* every Anthropic answer carries a ``request-id`` header and every Anthropic error body its
  ``request_id``, authentication failures included;
* Ollama ``/api/generate`` ends with ``context`` (``[]`` from backends without a tokenizer, none in
  raw mode) and accepts ``context`` in requests (the local model's ids: test_local_model_http.py);
* an Anthropic client's ``anthropic-beta`` header and the fields dragoman does not translate reach
  an Anthropic upstream as sent, while ``output_config.effort`` becomes the reasoning effort of
  OpenAI and Ollama upstreams;
* a bad request's message and ``param`` name the client's own field path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import orjson
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

BETA = "context-management-2025-06-27, interleaved-thinking-2025-05-14"  # as Claude Code spells it
CONTEXT_MANAGEMENT = {"edits": [{"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens",
                                                                                 "value": 30000},
                                 "keep": {"type": "tool_uses", "value": 3}, "clear_at_least": None}]}
OUTPUT_CONFIG = {"effort": "high"}


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    yield FakeAnthropic()


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    yield FakeOpenAI()


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllama]:
    yield FakeOllama()


@pytest.fixture(scope="module")
def gateway(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, fake_ollama: FakeOllama) -> Iterator[ServerThread]:
    with ServerThread(fake_anthropic.app()) as claude, ServerThread(fake_openai.app()) as gpt, \
            ServerThread(fake_ollama.app()) as llama:
        config = {
            "backends": [
                {"name": "test", "type": "echo", "models": ["echo"]},
                {"name": "plain", "type": "anthropic", "base_url": claude.url, "api_key": "sk-ant-test",
                 "models": ["claude-echo"]},
                {"name": "beta", "type": "anthropic", "base_url": claude.url, "api_key": "sk-ant-test",
                 "beta": ["beta-one", "context-management-2025-06-27"], "models": ["claude-echo"]},
                {"name": "up", "type": "openai", "base_url": f"{gpt.url}/v1", "api_key": "sk-test",
                 "models": ["gpt-test"]},
                {"name": "ol", "type": "ollama", "base_url": llama.url, "models": ["llama3:latest"]},
            ],
            "routing": {"retries": 0},
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 2},
        }
        with dragoman_server(config) as server:
            yield server


@pytest.fixture(scope="module")
def keys_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    directory: Path = tmp_path_factory.mktemp("exactness-keys")
    config = {"backends": [{"name": "test", "type": "echo", "models": ["echo"]}], "auth": {"mode": "keys"},
              "database": f"sqlite:///{directory / 'db.sqlite'}"}
    with dragoman_server(config) as server:
        yield server


@pytest.fixture()
def claude(gateway: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10)


@pytest.fixture()
def oai(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0, timeout=10)


@pytest.fixture()
def olla(gateway: ServerThread) -> ollama.Client:
    return ollama.Client(host=gateway.url, timeout=10)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------- OpenAI system_fingerprint


@pytest.mark.parametrize("model", ["test/echo", "up/gpt-test"])
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": user("hi")}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 5}),
])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_answers_never_carry_a_null_system_fingerprint(gateway: ServerThread, model: str, path: str,
                                                              body: dict[str, Any], stream: bool) -> None:
    request = {"model": model, **body, "stream": stream}
    if stream:
        request["stream_options"] = {"include_usage": True}
    response = httpx.post(f"{gateway.url}{path}", json=request, timeout=10)
    assert response.status_code == 200, response.text
    assert b"system_fingerprint" not in response.content
    objects = ([json.loads(line[6:]) for line in response.text.split("\n\n")
                if line.startswith("data: {")] if stream else [response.json()])
    assert objects and all("system_fingerprint" not in o for o in objects)
    assert all(set(o) >= {"id", "object", "created", "model", "choices"} for o in objects)


def test_openai_sdk_answers_have_no_system_fingerprint(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="test/echo", messages=user("hi"))
    assert b"system_fingerprint" not in raw.http_response.content
    assert raw.parse().choices[0].message.content == "hi"
    completion = oai.completions.with_raw_response.create(model="up/gpt-test", prompt="hi", max_tokens=5)
    assert b"system_fingerprint" not in completion.http_response.content
    assert completion.parse().choices[0].text
    with oai.chat.completions.with_streaming_response.create(model="test/echo", messages=user("hi"),
                                                             stream=True) as streamed:
        body = b"".join(streamed.iter_bytes())
    assert b"system_fingerprint" not in body and b'"content":"hi"' in body


# ------------------------------------------------------------------------- Anthropic request-id


def assert_request_id(response: httpx.Response | Any) -> str:
    request_id = response.headers["request-id"]
    assert request_id.startswith("req_") and len(request_id) > 8
    return str(request_id)


def test_count_tokens_and_models_carry_request_id(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.with_raw_response.count_tokens(model="test/echo", messages=user("hello there"))
    assert_request_id(counted)
    assert counted.parse().input_tokens > 0
    listed = claude.models.with_raw_response.list()
    assert_request_id(listed)
    assert "test/echo" in [m.id for m in listed.parse().data]
    retrieved = claude.models.with_raw_response.retrieve("test/echo")
    assert_request_id(retrieved)
    assert retrieved.parse().id == "test/echo"
    created = claude.messages.with_raw_response.create(model="test/echo", max_tokens=10, messages=user("hi"))
    with claude.messages.with_streaming_response.create(model="test/echo", max_tokens=10, messages=user("hi"),
                                                        stream=True) as streamed:
        assert b"event: message_stop" in b"".join(streamed.iter_bytes())
    ids = {assert_request_id(r) for r in (counted, listed, retrieved, created, streamed)}
    assert len(ids) == 5  # one per request


def test_a_client_request_id_is_kept(gateway: ServerThread) -> None:
    response = httpx.get(f"{gateway.url}/v1/models", timeout=10,
                         headers={"anthropic-version": "2023-06-01", "x-request-id": "req_mine_123"})
    assert response.status_code == 200 and response.headers["request-id"] == "req_mine_123"


def test_anthropic_errors_carry_request_id_in_header_and_body(claude: anthropic.Anthropic) -> None:
    calls = [
        lambda: claude.messages.count_tokens(model="test/echo", messages=[]),
        lambda: claude.messages.count_tokens(model="nope/none", messages=user("hi")),
        lambda: claude.models.retrieve("nope/none"),
        lambda: claude.models.list(limit=0),
        lambda: claude.messages.create(model="nope/none", max_tokens=5, messages=user("hi")),
        lambda: claude.messages.create(model="nope/none", max_tokens=5, messages=user("hi"), stream=True),
    ]
    for call in calls:
        with pytest.raises(anthropic.APIStatusError) as info:
            call()
        error = info.value
        assert error.status_code in (400, 404)
        assert isinstance(error.body, dict)
        assert error.request_id and error.request_id.startswith("req_")
        assert error.body["request_id"] == error.request_id == error.response.headers["request-id"]
        assert error.body["type"] == "error" and set(error.body["error"]) == {"type", "message"}


def test_keys_mode_401s_carry_request_id(keys_gateway: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=keys_gateway.url, api_key="dgm-not-a-key", max_retries=0, timeout=10)
    calls = [
        lambda: client.messages.create(model="test/echo", max_tokens=5, messages=user("hi")),
        lambda: client.messages.create(model="test/echo", max_tokens=5, messages=user("hi"), stream=True),
        lambda: client.messages.count_tokens(model="test/echo", messages=user("hi")),
        lambda: client.models.list(),
        lambda: client.models.retrieve("test/echo"),
    ]
    for call in calls:
        with pytest.raises(anthropic.AuthenticationError) as info:
            call()
        error = info.value
        assert error.request_id and error.request_id.startswith("req_")
        assert isinstance(error.body, dict)
        assert error.body["request_id"] == error.request_id
        assert error.body["error"]["type"] == "authentication_error"


# ---------------------------------------------------------------------- Ollama generate context


def test_generate_final_object_has_context(olla: ollama.Client, gateway: ServerThread) -> None:
    for model in ("test/echo", "ol/llama3:latest"):
        whole = olla.generate(model=model, prompt="hello", stream=False)
        assert whole.done and whole.context == []
        streamed = list(olla.generate(model=model, prompt="hello", stream=True))
        assert streamed[-1].done and streamed[-1].context == []
        assert all(part.context is None for part in streamed[:-1])
    # As in Ollama: raw mode answers without one, and /api/chat has none.
    raw = httpx.post(f"{gateway.url}/api/generate", timeout=10,
                     json={"model": "test/echo", "prompt": "x", "raw": True, "stream": False})
    assert raw.status_code == 200 and raw.json()["done"] and "context" not in raw.json()
    chat = httpx.post(f"{gateway.url}/api/chat", timeout=10,
                      json={"model": "test/echo", "messages": user("x"), "stream": False})
    assert chat.status_code == 200 and chat.json()["done"] and "context" not in chat.json()


def test_generate_accepts_context(olla: ollama.Client, fake_ollama: FakeOllama) -> None:
    answer = olla.generate(model="test/echo", prompt="again", context=[2, 9, 4], stream=False)
    assert answer.response == "again" and answer.context == []
    remote = olla.generate(model="ol/llama3:latest", prompt="again", context=[2, 9, 4], stream=False)
    assert remote.done and remote.context == []
    sent = fake_ollama.last("/api/chat").body  # a remote Ollama gets the prompt; the ids are not its tokens
    assert "context" not in sent and "context" not in sent.get("options", {})


# ----------------------------------------------------------- Anthropic fields and beta headers


def test_beta_header_and_untranslated_fields_reach_anthropic_as_sent(gateway: ServerThread,
                                                                     fake_anthropic: FakeAnthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}
    body = {"model": "plain/claude-echo", "max_tokens": 4096, "messages": user("hi"), "stream": True,
            "thinking": thinking, "context_management": CONTEXT_MANAGEMENT,
            "output_config": {"effort": "medium", "future_key": [1.5, "x"]}, "service_tier": "auto",
            "container": None}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", content=orjson.dumps(body), timeout=10,
                      headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                               "anthropic-beta": BETA}) as response:
        assert response.status_code == 200
        assert b'"text":"Echo: hi"' in response.read().replace(b'", "', b'","')
    received = fake_anthropic.last()
    assert received.headers["anthropic-beta"] == BETA
    for name in ("thinking", "context_management", "output_config", "service_tier", "container"):
        assert received.body[name] == body[name]
        assert b'"' + name.encode() + b'":' + orjson.dumps(body[name]) in received.raw  # the same bytes
    assert received.body["max_tokens"] == 4096


def test_sdk_fields_pass_to_anthropic_and_betas_merge(claude: anthropic.Anthropic,
                                                      fake_anthropic: FakeAnthropic) -> None:
    answer = claude.messages.create(
        model="beta/claude-echo", max_tokens=100, messages=user("hi"), thinking={"type": "adaptive"},
        extra_headers={"anthropic-beta": BETA},
        extra_body={"context_management": CONTEXT_MANAGEMENT, "output_config": OUTPUT_CONFIG})
    assert answer.content[-1].type == "text" and answer.content[-1].text == "Echo: hi"
    received = fake_anthropic.last()
    assert received.headers["anthropic-beta"] == ("beta-one,context-management-2025-06-27,"
                                                  "interleaved-thinking-2025-05-14")
    assert received.body["thinking"] == {"type": "adaptive"}
    assert received.body["context_management"] == CONTEXT_MANAGEMENT
    assert received.body["output_config"] == OUTPUT_CONFIG


def test_count_tokens_passes_fields_and_beta(claude: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    counted = claude.messages.count_tokens(model="plain/claude-echo", messages=user("hi"),
                                           extra_headers={"anthropic-beta": BETA},
                                           extra_body={"context_management": CONTEXT_MANAGEMENT})
    assert counted.input_tokens == 42  # the fake's own count
    received = fake_anthropic.last("/v1/messages/count_tokens")
    assert received.headers["anthropic-beta"] == BETA
    assert received.body["context_management"] == CONTEXT_MANAGEMENT


def test_effort_alone_does_not_turn_on_anthropic_thinking(claude: anthropic.Anthropic,
                                                          fake_anthropic: FakeAnthropic) -> None:
    claude.messages.create(model="plain/claude-echo", max_tokens=100, messages=user("hi"),
                           extra_body={"output_config": OUTPUT_CONFIG})
    received = fake_anthropic.last().body
    assert received["output_config"] == OUTPUT_CONFIG
    assert "thinking" not in received and received["max_tokens"] == 100


def test_output_config_effort_reaches_openai_and_ollama_upstreams(claude: anthropic.Anthropic, fake_openai: FakeOpenAI,
                                                                   fake_ollama: FakeOllama) -> None:
    extra = {"output_config": OUTPUT_CONFIG, "context_management": CONTEXT_MANAGEMENT}
    gpt = claude.messages.create(model="up/gpt-test", max_tokens=50, messages=user("hi"), extra_body=extra,
                                 extra_headers={"anthropic-beta": BETA})
    assert gpt.content[-1].type == "text" and gpt.content[-1].text == "You said: hi"
    sent = fake_openai.last().body
    assert sent["reasoning_effort"] == "high"
    assert "output_config" not in sent and "context_management" not in sent
    assert "anthropic-beta" not in fake_openai.last().headers
    llama = claude.messages.create(model="ol/llama3:latest", max_tokens=50, messages=user("hi"), extra_body=extra)
    assert [block.type for block in llama.content] == ["thinking", "text"]  # the fake thinks when asked to
    assert llama.content[0].type == "thinking" and llama.content[0].thinking == "Let me think."
    sent = fake_ollama.last("/api/chat").body
    assert sent["think"] == "high"
    assert "output_config" not in sent and "context_management" not in sent


# ----------------------------------------------------------------- errors name the client's field


def openai_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_empty_tool_call_id_is_named_empty(oai: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "x", "tool_call_id": ""},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="test/echo", messages=messages)
    assert info.value.body == {
        "message": "messages[1].tool_call_id is empty: it must be the id of the tool call this message answers",
        "type": "invalid_request_error", "param": "messages[1].tool_call_id", "code": None}
    messages[1]["tool_call_id"] = None
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="test/echo", messages=messages)
    assert info.value.body["message"] == ("messages[1].tool_call_id is null: it must be the id of the tool call "
                                          "this message answers")
    del messages[1]["tool_call_id"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="test/echo", messages=messages)
    assert info.value.body["message"] == ("messages[1].tool_call_id: field required (the id of the tool call "
                                          "this message answers)")


@pytest.mark.parametrize(("path", "body", "message", "param"), [
    ("/v1/completions", {"model": "test/echo", "prompt": 123},
     "prompt: Input should be a valid string or a valid list", "prompt"),
    ("/v1/completions", {"model": "test/echo", "prompt": ["a", 5]},
     "prompt[1]: Input should be a valid string", "prompt[1]"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text: field required", "messages[0].content[0].text"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content: Input should be a valid string or a valid list", "messages[0].content"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]},
     "messages[0].content[0].image_url.url: field required", "messages[0].content[0].image_url.url"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": user("x"), "tool_choice": "sometimes"},
     "tool_choice: Input should be 'none', 'auto' or 'required' or a valid dictionary or instance of "
     "NamedToolChoice", "tool_choice"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": user("x"), "stop": 5},
     "stop: Input should be a valid string or a valid list", "stop"),
    ("/v1/chat/completions", {"model": "test/echo", "messages": [
        {"role": "user", "content": [{"type": "text"}]}, {"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text: field required (and 1 more error)", "messages[0].content[0].text"),
    ("/v1/embeddings", {"model": "test/echo", "input": {"a": 1}},
     "input: Input should be a valid string or a valid list", "input"),
])
def test_openai_errors_name_the_clients_field(gateway: ServerThread, path: str, body: dict[str, Any],
                                              message: str, param: str) -> None:
    error = openai_error(httpx.post(f"{gateway.url}{path}", json=body, timeout=10))
    assert (error["message"], error["param"]) == (message, param)


def test_anthropic_and_ollama_errors_name_the_clients_field(claude: anthropic.Anthropic,
                                                            gateway: ServerThread) -> None:
    no_media_type: Any = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                                    "data": "AAAA"}}]}]
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="test/echo", max_tokens=5, messages=no_media_type)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["message"] == "messages[0].content[0].source.media_type: field required"
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="test/echo", max_tokens=5, messages=user("x"),
                               tools=[{"name": "t", "input_schema": {"type": "object"}}],
                               tool_choice={"type": "tool", "name": ""})
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["message"] == "tool_choice.name: must not be empty"
    # The ollama SDK checks ``context`` itself, so this one goes raw.
    refused = httpx.post(f"{gateway.url}/api/generate", json={"model": "test/echo", "prompt": "x", "context": ["a"]},
                         timeout=10)
    assert refused.status_code == 400
    assert refused.json() == {"error": "context[0]: Input should be a valid integer, unable to parse string as an "
                                       "integer"}
