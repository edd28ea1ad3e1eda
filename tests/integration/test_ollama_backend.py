"""The Ollama backend against a fake Ollama server, driven through dragoman by the official SDKs."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.fakes.ollama_upstream import PNG, FakeOllama
from tests.servers import ServerThread, dragoman_server


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    yield FakeOllama()


@pytest.fixture(scope="module")
def upstream(fake: FakeOllama) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server


def config(upstream: ServerThread, **extra: Any) -> dict[str, Any]:
    backend = {"name": "ol", "type": "ollama", "base_url": upstream.url, "options": {"num_ctx": 8192},
               "keep_alive": "10m", "models": ["*"]}
    return {"backends": [backend], "images": {"allow_private": True}, **extra}


@pytest.fixture(scope="module")
def gateway(upstream: ServerThread) -> Iterator[ServerThread]:
    with dragoman_server(config(upstream, model_refresh_seconds=0.2)) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)


TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                      "parameters": {"type": "object",
                                                                     "properties": {"city": {"type": "string"}}}}}]


# --------------------------------------------------------------------------------- chat


def test_plain_chat_streamed_and_whole(client: openai.OpenAI, fake: FakeOllama) -> None:
    whole = client.chat.completions.create(model="ol/llama3", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "You said: hi"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 7)
    chunks = list(client.chat.completions.create(model="ol/llama3:latest", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hello"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    sent = fake.last("/api/chat").body
    assert sent["model"] == "llama3:latest" and sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["keep_alive"] == "10m"
    # OpenAI's defaults arrive explicitly; the backend's num_ctx sits under them.
    assert sent["options"] == {"num_ctx": 8192, "temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0,
                               "frequency_penalty": 0.0}


def test_sampling_and_format_are_translated(client: openai.OpenAI, fake: FakeOllama) -> None:
    client.chat.completions.create(
        model="ol/llama3", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
        max_tokens=20, temperature=0.3, top_p=0.5, seed=42, stop=["END"], response_format={"type": "json_object"},
    )
    sent = fake.last("/api/chat").body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["options"]["num_predict"] == 20
    assert (sent["options"]["temperature"], sent["options"]["top_p"], sent["options"]["seed"]) == (0.3, 0.5, 42)
    assert sent["options"]["stop"] == ["END"]
    assert sent["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    client.chat.completions.create(model="ol/llama3", messages=[{"role": "user", "content": "x"}],
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "r", "schema": schema}})
    assert fake.last("/api/chat").body["format"] == schema


def test_tool_calls_without_ids_get_ids_and_string_arguments(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="ol/tools", messages=[{"role": "user", "content": "weather?"}],
                                           tools=TOOLS)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "UTC"}]
    ids = [c.id for c in calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2

    chunks = list(client.chat.completions.create(model="ol/tools", stream=True, tools=TOOLS,
                                                 messages=[{"role": "user", "content": "weather?"}]))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    streamed_ids = [d.id for d in deltas if d.id]
    assert len(streamed_ids) == 2 and all(i.startswith("call_") for i in streamed_ids)
    arguments: dict[int, str] = {}
    for d in deltas:
        arguments[d.index] = arguments.get(d.index, "") + (d.function.arguments or "" if d.function else "")
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [{"city": "Paris"}, {"tz": "UTC"}]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_results_carry_tool_name_and_tools_are_sent(client: openai.OpenAI, fake: FakeOllama) -> None:
    client.chat.completions.create(model="ol/llama3", tools=TOOLS, messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees"},
    ])
    sent = fake.last("/api/chat").body
    assert sent["tools"] == [{"type": "function", "function": TOOLS[0]["function"]}]
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["tool_calls"] == [{"id": "call_abc", "function": {"name": "get_weather",
                                                                       "arguments": {"city": "Paris"}}}]
    assert tool == {"role": "tool", "content": "18 degrees", "tool_call_id": "call_abc", "tool_name": "get_weather"}


def test_thinking_comes_back_as_reasoning(client: openai.OpenAI, fake: FakeOllama) -> None:
    whole = client.chat.completions.create(model="ol/thinker", messages=[{"role": "user", "content": "q"}],
                                           reasoning_effort="high")
    message = whole.choices[0].message
    assert message.content == "Answer."
    assert (message.model_extra or {})["reasoning_content"] == "Let me think."
    assert fake.last("/api/chat").body["think"] == "high"
    for effort, think in (("minimal", "low"), ("xhigh", "max"), ("none", False)):
        client.chat.completions.create(model="ol/thinker", messages=[{"role": "user", "content": "q"}],
                                       reasoning_effort=effort)  # type: ignore[arg-type]
        assert fake.last("/api/chat").body["think"] == think
    # A model without the thinking capability is not asked to think (Ollama would answer 400).
    client.chat.completions.create(model="ol/long", messages=[{"role": "user", "content": "q"}],
                                   reasoning_effort="high")
    assert "think" not in fake.last("/api/chat").body


def test_length_finish_reason(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="ol/long", messages=[{"role": "user", "content": "story"}],
                                           max_tokens=4)
    assert whole.choices[0].message.content == "Once upon a time"
    assert whole.choices[0].finish_reason == "length"


def test_ndjson_split_at_odd_boundaries(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="ol/split", stream=True,
                                                 messages=[{"role": "user", "content": "dessert"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Café crème brûlée"


def test_eof_without_done_is_an_upstream_error(client: openai.OpenAI) -> None:
    """A body that ends before the ``done: true`` line is a cut answer, not a complete one."""
    cut = "upstream 'ol' closed the stream before the answer finished (no line with done: true)"
    with pytest.raises(openai.InternalServerError) as whole:
        client.chat.completions.create(model="ol/nodone", messages=[{"role": "user", "content": "abc"}])
    assert whole.value.status_code == 502 and whole.value.message == f"Error code: 502 - {cut}"
    parts: list[str] = []
    with pytest.raises(openai.APIError) as streamed:
        for chunk in client.chat.completions.create(model="ol/nodone", stream=True,
                                                    messages=[{"role": "user", "content": "abc"}]):
            assert all(c.finish_reason is None for c in chunk.choices)  # nothing claims a normal end
            parts += [c.delta.content or "" for c in chunk.choices]
    assert "".join(parts) == "You said: abc" and streamed.value.message == cut


def test_midstream_error_reaches_the_client(client: openai.OpenAI, gateway: ServerThread) -> None:
    with pytest.raises(openai.APIError, match="an error was encountered while running the model"):
        list(client.chat.completions.create(model="ol/midstream-error", stream=True,
                                            messages=[{"role": "user", "content": "x"}]))
    # An Ollama client sees Ollama's own error line after the partial answer.
    with httpx.stream("POST", gateway.url + "/api/chat", json={
            "model": "ol/midstream-error", "messages": [{"role": "user", "content": "x"}]}) as response:
        lines = [json.loads(line) for line in response.iter_lines()]
    assert response.status_code == 200
    assert lines[0]["message"]["content"] == "partial "
    assert lines[-1] == {"error": "an error was encountered while running the model"}


def test_whole_answer_failing_after_routing_names_the_deployment(client: openai.OpenAI) -> None:
    """A non-streamed answer that fails once the upstream has started is a 502 in OpenAI's shape
    that still says which deployment answered (as every routed response does)."""
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="ol/midstream-error", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.body == {"message": "an error was encountered while running the model",
                               "type": "api_error", "param": None, "code": "upstream_error"}
    headers = info.value.response.headers
    assert (headers["x-dragoman-backend"], headers["x-dragoman-attempts"]) == (
        "ol/midstream-error:latest", "1")  # the tag Ollama gives an untagged name


def test_upstream_404_keeps_ollamas_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="ol/ghost", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert 'model "ghost:latest" not found, try pulling it first' in str(info.value)


def test_raw_completion_uses_generate(client: openai.OpenAI, fake: FakeOllama) -> None:
    answer = client.completions.create(model="ol/llama3", prompt="Once", max_tokens=5)
    assert answer.choices[0].text == "Generated: Once"
    sent = fake.last("/api/generate").body
    assert sent["raw"] is True and sent["prompt"] == "Once" and sent["options"]["num_predict"] == 5


def test_embeddings_use_api_embed(client: openai.OpenAI, fake: FakeOllama) -> None:
    result = client.embeddings.create(model="ol/embed", input=["ab", "abcd"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 3
    assert result.usage.prompt_tokens == 6
    sent = fake.last("/api/embed").body
    assert sent["input"] == ["ab", "abcd"] and sent["options"] == {"num_ctx": 8192}


def test_images_as_data_and_as_fetched_urls(client: openai.OpenAI, fake: FakeOllama, upstream: ServerThread) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    answer = client.chat.completions.create(model="ol/llama3", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": upstream.url + "/img.png"}},
    ]}])
    assert answer.choices[0].message.content == "You said: what is this [2 image(s)]"
    sent = fake.last("/api/chat").body["messages"][0]
    expected = base64.b64encode(PNG).decode()
    assert sent["images"] == [expected, expected]


def test_image_urls_to_private_addresses_are_refused(upstream: ServerThread) -> None:
    cfg = config(upstream)
    del cfg["images"]
    with dragoman_server(cfg) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="ol/llama3", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": upstream.url + "/img.png"}}]}])
    assert "non-public address (127.0.0.1)" in str(info.value)


# ------------------------------------------------------------------------------ models


def test_models_and_details_are_discovered(gateway: ServerThread) -> None:
    client = ollama.Client(host=gateway.url)
    names = {m.model for m in client.list().models}
    assert {"ol/llama3:latest", "ol/embed:latest", "ol/tools:latest"} <= names
    tag = next(m for m in client.list().models if m.model == "ol/llama3:latest")
    assert tag.details is not None and tag.details.quantization_level == "Q4_K_M"
    assert tag.size == 4_920_753_328 and tag.digest and len(tag.digest) == 64
    shown = client.show("ol/llama3")
    assert shown.capabilities == ["completion", "vision", "tools", "thinking"]
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 8192
    assert shown.license == "fake license" and shown.template == "{{ .Prompt }}"
    assert shown.parameters == 'stop "<|eot|>"\ntemperature 0.6'
    assert client.show("ol/embed").capabilities == ["embedding"]


def test_a_model_added_upstream_appears_without_restart(gateway: ServerThread, fake: FakeOllama,
                                                        client: openai.OpenAI) -> None:
    fake.add_model("fresh:latest", ["completion"])
    try:
        answer = client.chat.completions.create(model="ol/fresh", messages=[{"role": "user", "content": "new"}])
        assert answer.choices[0].message.content == "You said: new"
        deadline = time.monotonic() + 5
        while "ol/fresh:latest" not in {m.id for m in client.models.list().data}:
            assert time.monotonic() < deadline, "the new model was never listed"
            time.sleep(0.1)
    finally:
        with fake.lock:
            del fake.models["fresh:latest"]


def test_ollama_client_through_to_an_ollama_backend(gateway: ServerThread, fake: FakeOllama) -> None:
    client = ollama.Client(host=gateway.url)
    parts = list(client.chat(model="ol/tools", messages=[{"role": "user", "content": "w"}], stream=True,
                             tools=TOOLS, options={"num_ctx": 2048, "temperature": 0.1}))
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    sent = fake.last("/api/chat").body
    assert sent["options"]["num_ctx"] == 2048 and sent["options"]["temperature"] == 0.1
    assert sent["options"]["top_k"] == 40  # the Ollama dialect's default, explicit
    answer = client.chat(model="ol/llama3", messages=[{"role": "user", "content": "q"}], think="low")
    assert (answer.message.thinking, answer.message.content) == ("Let me think.", "Answer.")
    assert fake.last("/api/chat").body["think"] == "low"


def test_an_unreachable_server_lists_nothing() -> None:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with dragoman_server({"backends": [{"name": "ol", "type": "ollama", "base_url": url}]}) as server:
        client = ollama.Client(host=server.url)
        assert client.list().models == []
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="ol/llama3", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404
