"""The Ollama API served by dragoman, exercised with the official ``ollama`` client (and httpx for
what the client hides), over the echo backend and over the OpenAI-compatible backend."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.fakes.ollama_upstream import PNG
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

NANO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
           "eval_duration")
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                      "parameters": {"type": "object",
                                                                     "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def fake_openai() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def gateway(fake_openai: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake_openai.app()) as upstream:
        config = {"backends": [{"name": "test", "type": "echo", "models": ["echo"]},
                               {"name": "up", "type": "openai", "base_url": upstream.url + "/v1",
                                "models": ["gpt-*"]}],
                  "aliases": {"my-echo": "test/echo"}}
        with dragoman_server(config) as server:
            yield server


@pytest.fixture(scope="module")
def client(gateway: ServerThread) -> ollama.Client:
    return ollama.Client(host=gateway.url)


def post_lines(gateway: ServerThread, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    with httpx.stream("POST", gateway.url + path, json=body, timeout=10) as response:
        raw = response.read()
    assert raw.endswith(b"\n") and b"\n\n" not in raw
    return response, [json.loads(line) for line in raw.split(b"\n") if line]


# ------------------------------------------------------------------------------- models


def test_version(gateway: ServerThread) -> None:
    response = httpx.get(gateway.url + "/api/version")
    assert response.status_code == 200 and re.match(r"^\d+\.\d+\.\d+$", response.json()["version"])
    assert httpx.head(gateway.url + "/api/version").status_code == 200


def test_list_has_complete_entries(client: ollama.Client, gateway: ServerThread) -> None:
    listed = client.list().models
    assert {m.model for m in listed} >= {"test/echo", "my-echo", "up/gpt-test"}
    raw = httpx.get(gateway.url + "/api/tags").json()["models"]
    entry = next(m for m in raw if m["name"] == "test/echo")
    assert entry["model"] == "test/echo"
    assert NANO_TIME.match(entry["modified_at"])
    assert isinstance(entry["size"], int)
    assert re.match(r"^[0-9a-f]{64}$", entry["digest"])
    assert entry["details"] == {"parent_model": "", "format": "echo", "family": "echo", "families": ["echo"],
                                "parameter_size": "0", "quantization_level": "none"}
    remote = next(m for m in raw if m["name"] == "up/gpt-test")
    assert all(isinstance(v, str) for k, v in remote["details"].items() if k != "families")
    assert remote["details"]["families"] == []
    assert httpx.head(gateway.url + "/api/tags").status_code == 200


def test_show(client: ollama.Client, gateway: ServerThread) -> None:
    shown = client.show("test/echo")
    assert shown.capabilities == ["completion", "vision", "tools", "thinking", "embedding"]
    assert shown.modelinfo == {"general.architecture": "echo", "echo.context_length": 1_000_000,
                               "echo.embedding_length": 32}
    assert shown.details is not None and shown.details.family == "echo"
    raw = httpx.post(gateway.url + "/api/show", json={"name": "my-echo"}).json()  # OllamaKit's spelling
    for key in ("license", "template", "modelfile", "parameters"):
        assert isinstance(raw[key], str)
    assert "FROM my-echo" in raw["modelfile"]
    assert NANO_TIME.match(raw["modified_at"])


def test_ps_lists_nothing_for_remote_backends(client: ollama.Client) -> None:
    assert client.ps().models == []


# --------------------------------------------------------------------------------- chat


def test_chat_whole_and_streamed(client: ollama.Client, gateway: ServerThread) -> None:
    answer = client.chat(model="test/echo", messages=[{"role": "user", "content": "hello there"}])
    assert answer.message.role == "assistant" and answer.message.content == "hello there"
    assert answer.done and answer.done_reason == "stop" and answer.model == "test/echo"
    assert answer.eval_count == 2 and answer.prompt_eval_count == 2
    parts = list(client.chat(model="my-echo", messages=[{"role": "user", "content": "one two three"}],
                             stream=True))
    assert "".join(p.message.content or "" for p in parts) == "one two three"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].message.content == "" and parts[-1].done_reason == "stop"

    response, lines = post_lines(gateway, "/api/chat", {"model": "test/echo",
                                                         "messages": [{"role": "user", "content": "a b"}]})
    assert response.headers["content-type"] == "application/x-ndjson"
    for line in lines:
        assert line["model"] == "test/echo" and NANO_TIME.match(line["created_at"])
        assert line["message"]["role"] == "assistant"
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert all(isinstance(final[k], int) for k in METRICS)
    parts_sum = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert 0 <= parts_sum - final["total_duration"] <= 2  # the phases add up (durations are at least 1 ns)


def test_generate(client: ollama.Client, gateway: ServerThread) -> None:
    answer = client.generate(model="test/echo", prompt="why is the sky blue", system="Be brief.")
    assert answer.response == "why is the sky blue" and answer.done_reason == "stop"
    parts = list(client.generate(model="test/echo", prompt="raw text here", raw=True, stream=True))
    assert "".join(p.response or "" for p in parts) == "raw text here"
    assert parts[-1].done and parts[-1].response == ""
    _, lines = post_lines(gateway, "/api/generate", {"model": "test/echo", "prompt": "x y"})
    assert all("response" in line and "message" not in line for line in lines)
    assert all(k in lines[-1] for k in METRICS)


def test_thinking(client: ollama.Client) -> None:
    answer = client.chat(model="test/echo", messages=[{"role": "user", "content": "deep"}], think=True)
    assert (answer.message.thinking, answer.message.content) == ("Thinking: deep", "deep")
    parts = list(client.chat(model="test/echo", messages=[{"role": "user", "content": "deep"}], think="high",
                             stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Thinking: deep"
    assert "".join(p.message.content or "" for p in parts) == "deep"
    generated = client.generate(model="test/echo", prompt="hmm", think=True)
    assert (generated.thinking, generated.response) == ("Thinking: hmm", "hmm")
    assert client.chat(model="test/echo", messages=[{"role": "user", "content": "x"}], think=False
                       ).message.thinking is None


def test_tool_calls_have_object_arguments(client: ollama.Client, gateway: ServerThread) -> None:
    prompt = '!tool get_weather {"city": "Paris"}'
    answer = client.chat(model="test/echo", messages=[{"role": "user", "content": prompt}], tools=TOOLS)
    [call] = answer.message.tool_calls or []
    assert call.function.name == "get_weather" and dict(call.function.arguments) == {"city": "Paris"}
    assert answer.done_reason == "stop"
    _, lines = post_lines(gateway, "/api/chat", {"model": "test/echo", "tools": TOOLS,
                                                 "messages": [{"role": "user", "content": prompt}]})
    calls = [line["message"]["tool_calls"] for line in lines if line["message"].get("tool_calls")]
    assert len(calls) == 1  # sent whole, once
    assert calls[0][0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert calls[0][0]["id"].startswith("call_")


def test_tool_result_history(client: ollama.Client) -> None:
    answer = client.chat(model="test/echo", tools=TOOLS, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ])
    assert answer.message.content == "18 degrees"


def test_tool_history_ids_pair_over_openai(client: ollama.Client, fake_openai: FakeOpenAI) -> None:
    client.chat(model="up/gpt-test", tools=TOOLS, messages=[
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "noon", "tool_name": "get_time"},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"},
    ])
    messages = fake_openai.last().body["messages"]
    calls = messages[1]["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("call_1_0", "get_weather", {"city": "Paris"}), ("call_1_1", "get_time", {})]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:4]] == [("call_1_1", "noon"),
                                                                          ("call_1_0", "18 degrees")]


def test_images_are_decoded(client: ollama.Client, fake_openai: FakeOpenAI) -> None:
    answer = client.chat(model="test/echo", messages=[{"role": "user", "content": "look", "images": [PNG]}])
    assert answer.message.content == "look"
    client.chat(model="up/gpt-test", messages=[{"role": "user", "content": "look", "images": [PNG]}])
    content = fake_openai.last().body["messages"][0]["content"]
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()


def test_max_tokens_and_stop(client: ollama.Client) -> None:
    answer = client.chat(model="test/echo", messages=[{"role": "user", "content": "a b c d e"}],
                         options={"num_predict": 2})
    assert answer.message.content == "a b " and answer.done_reason == "length"
    unlimited = client.chat(model="test/echo", messages=[{"role": "user", "content": "a b c"}],
                            options={"num_predict": -1, "stop": ["c"]})
    assert unlimited.message.content == "a b " and unlimited.done_reason == "stop"


def test_options_reach_the_backend(gateway: ServerThread, fake_openai: FakeOpenAI) -> None:
    httpx.post(gateway.url + "/api/chat", json={
        "model": "up/gpt-test", "stream": False, "messages": [{"role": "user", "content": "x"}],
        "options": {"num_predict": 7, "temperature": 0.2, "top_p": 0.5, "seed": 3, "stop": "END",
                    "presence_penalty": 0.1, "frequency_penalty": 0.2, "num_ctx": 4096, "mirostat": 2,
                    "tfs_z": 1.0, "no_such_option": True}}).raise_for_status()
    sent = fake_openai.last().body
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (7, 0.2, 0.5, 3)
    assert (sent["stop"], sent["presence_penalty"], sent["frequency_penalty"]) == (["END"], 0.1, 0.2)
    # Absent options get Ollama's defaults, explicitly.
    httpx.post(gateway.url + "/api/chat", json={"model": "up/gpt-test", "stream": False,
                                                "messages": [{"role": "user", "content": "x"}]}).raise_for_status()
    sent = fake_openai.last().body
    assert (sent["temperature"], sent["top_p"], "max_tokens" in sent) == (0.8, 0.9, False)


def test_ollamakit_top_level_options(gateway: ServerThread, fake_openai: FakeOpenAI) -> None:
    httpx.post(gateway.url + "/api/chat", json={
        "model": "up/gpt-test", "stream": False, "temperature": 0.3, "top_p": 0.4, "stop": "STOP",
        "messages": [{"role": "user", "content": "x"}], "options": {"top_p": 0.6}}).raise_for_status()
    sent = fake_openai.last().body
    assert (sent["temperature"], sent["top_p"], sent["stop"]) == (0.3, 0.6, ["STOP"])


def test_format_and_think_over_openai(client: ollama.Client, fake_openai: FakeOpenAI) -> None:
    client.chat(model="up/gpt-test", messages=[{"role": "user", "content": "x"}], format="json")
    assert fake_openai.last().body["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.chat(model="up/gpt-test", messages=[{"role": "user", "content": "x"}], format=schema)
    assert fake_openai.last().body["response_format"]["json_schema"]["schema"] == schema


def test_over_openai_backend(client: ollama.Client) -> None:
    parts = list(client.chat(model="up/gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "You said: hi"
    assert parts[-1].prompt_eval_count == 11 and parts[-1].eval_count == 7
    tools = client.chat(model="up/gpt-tools", messages=[{"role": "user", "content": "x"}], tools=TOOLS)
    assert [(c.function.name, dict(c.function.arguments)) for c in tools.message.tool_calls or []] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    reasoned = client.chat(model="up/gpt-reason", messages=[{"role": "user", "content": "x"}])
    assert (reasoned.message.thinking, reasoned.message.content) == ("Let me think.", "Answer.")
    generated = client.generate(model="up/gpt-test", prompt="raw", raw=True)
    assert generated.response == "completed: raw"


def test_load_and_unload(gateway: ServerThread) -> None:
    chat = httpx.post(gateway.url + "/api/chat", json={"model": "test/echo", "messages": []}).json()
    assert chat["done_reason"] == "load" and chat["done"] is True
    assert chat["message"] == {"role": "assistant", "content": ""}
    generate = httpx.post(gateway.url + "/api/generate", json={"model": "test/echo"}).json()
    assert (generate["done_reason"], generate["response"]) == ("load", "")
    unload = httpx.post(gateway.url + "/api/generate", json={"model": "test/echo", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"


def test_embed(client: ollama.Client) -> None:
    result = client.embed(model="test/echo", input=["one", "two"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 32
    assert all(abs(sum(v * v for v in vector) - 1) < 1e-9 for vector in result.embeddings)
    assert client.embed(model="test/echo", input="one").embeddings[0] == result.embeddings[0]
    assert len(client.embed(model="test/echo", input="one", dimensions=8).embeddings[0]) == 8
    assert client.embed(model="test/echo", input=[]).embeddings == []
    # Over the OpenAI backend the vectors are normalised here.
    [vector] = client.embed(model="up/gpt-test", input="abc").embeddings
    assert abs(sum(v * v for v in vector) - 1) < 1e-6


def test_legacy_embeddings(client: ollama.Client) -> None:
    assert len(client.embeddings(model="test/echo", prompt="one").embedding) == 32
    assert client.embeddings(model="test/echo", prompt="").embedding == []


# ------------------------------------------------------------------------------- errors


def error_of(gateway: ServerThread, path: str, body: Any, *, raw: bytes | None = None) -> tuple[int, str]:
    if raw is not None:
        response = httpx.post(gateway.url + path, content=raw, headers={"content-type": "application/json"})
    else:
        response = httpx.post(gateway.url + path, json=body)
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    return response.status_code, response.json()["error"]


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("options", "message"), [
    ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float'),
    ({"num_predict": True}, 'option "num_predict" must be of type integer'),
    ({"stop": 5}, 'option "stop" must be of type array'),
    ({"stop": ["a", 1]}, 'option "stop" must be an array of strings'),
    ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
])
def test_wrongly_typed_option(gateway: ServerThread, options: dict[str, Any], message: str) -> None:
    assert error_of(gateway, "/api/chat", {"model": "test/echo", "messages": USER, "options": options}) == (
        400, message)


def test_wrongly_typed_option_via_the_client(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="test/echo", messages=USER, options={"num_ctx": "big"})
    assert info.value.status_code == 400 and info.value.error == 'option "num_ctx" must be of type integer'


def test_unknown_model(client: ollama.Client, gateway: ServerThread) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=USER)
    assert info.value.status_code == 404 and info.value.error.startswith("model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope")
    assert (info.value.status_code, info.value.error) == (404, "model 'nope' not found")
    for path, body in (("/api/generate", {"model": "nope", "prompt": "x"}), ("/api/embed", {"model": "nope",
                                                                                           "input": "x"}),
                       ("/api/embeddings", {"model": "nope", "prompt": ""}),
                       ("/api/chat", {"model": "nope", "messages": []})):
        status, message = error_of(gateway, path, body)
        assert status == 404 and message.startswith("model 'nope' not found"), path


@pytest.mark.parametrize(("path", "body", "raw", "message"), [
    ("/api/chat", None, b'{"model": "test/echo", "messages": [', "request body is not valid JSON"),
    ("/api/chat", None, b"", "request body is empty; expected a JSON object"),
    ("/api/chat", [1, 2], None, "request body must be a JSON object"),
    ("/api/chat", {"messages": USER}, None, "model is required"),
    ("/api/show", {}, None, "model is required"),
    ("/api/chat", {"model": "test/echo", "messages": USER, "think": "very"}, None,
     'invalid think value: "very" (must be "low", "medium", "high", "max", true, or false)'),
    ("/api/chat", {"model": "test/echo", "messages": USER, "format": "xml"}, None,
     'invalid format: expected "json" or a JSON schema object'),
    ("/api/chat", {"model": "test/echo", "messages": [{"role": "user", "content": "x", "images": ["@@@"]}]}, None,
     "image data is not valid base64"),
    ("/api/chat", {"model": "test/echo", "messages": [{"role": "wizard", "content": "x"}]}, None,
     "messages[0].role: unknown role 'wizard'; expected system, user, assistant or tool"),
    ("/api/chat", {"model": "test/echo", "messages": [{"content": "x"}]}, None, "messages[0].role: field required"),
    ("/api/chat", {"model": "test/echo", "messages": "hi"}, None, "messages: Input should be a valid list"),
    ("/api/generate", {"model": "test/echo", "prompt": "x", "raw": True, "system": "s"}, None,
     "raw mode does not support template, system, or context"),
    ("/api/embed", {"model": "test/echo", "input": [1, 2]}, None, "invalid input type"),
])
def test_bad_input(gateway: ServerThread, path: str, body: Any, raw: bytes | None, message: str) -> None:
    status, error = error_of(gateway, path, body, raw=raw)
    assert status == 400 and error.startswith(message), error


def test_upstream_error_status_passes_through(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/api/chat", json={"model": "up/gpt-error-429", "messages": USER})
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.json() == {"error": "fake upstream failure 429"}


def test_midstream_error_is_an_error_line(gateway: ServerThread) -> None:
    response, lines = post_lines(gateway, "/api/chat", {"model": "up/gpt-midstream-error", "messages": USER})
    assert response.status_code == 200
    assert lines[0]["message"]["content"] == "partial "
    assert lines[-1] == {"error": "upstream exploded"}


def test_midstream_error_via_the_client(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="upstream exploded"):
        list(client.chat(model="up/gpt-midstream-error", messages=USER, stream=True))


def test_model_management_without_a_backend_that_pulls(gateway: ServerThread) -> None:
    response = httpx.post(gateway.url + "/api/pull", json={"model": "llama3"})
    assert response.status_code == 400 and "no backend can pull 'llama3'" in response.json()["error"]
    response = httpx.post(gateway.url + "/api/push", json={"model": "llama3"})
    assert response.status_code == 501 and "cannot push" in response.json()["error"]
