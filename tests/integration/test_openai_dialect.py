"""The OpenAI dialect over real HTTP, driven by the official ``openai`` SDK.

Backends: ``echo`` and an OpenAI-compatible fake upstream (tests/fakes/openai_upstream.py).
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def gateway(upstream: ServerThread) -> Iterator[ServerThread]:
    config = {
        "backends": [
            {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
             "models": ["gpt-*", "text-embedding-test"]},
            {"name": "test", "type": "echo", "models": ["echo"]},
            {"name": "fwd", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "forward",
             "models": ["gpt-test"]},
        ],
        "timeouts": {"connect": 2, "first_byte": 2, "idle": 1},
        "server": {"max_body_bytes": 200_000},
    }
    with dragoman_server(config) as server:
        yield server


@pytest.fixture()
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0, timeout=10)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------------- basics


def test_echo_text_and_usage(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="test/echo", messages=user("Hello  wide world"))
    choice = response.choices[0]
    assert choice.message.content == "Hello  wide world"
    assert choice.finish_reason == "stop"
    assert response.model == "test/echo"
    assert response.id.startswith("chatcmpl-")
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 3)


def test_bare_model_name_resolves_when_unique(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="echo", messages=user("hi")).choices[0].message.content == "hi"


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    for model in ("test/echo", "up/gpt-test", "up/gpt-reason", "up/gpt-tools"):
        whole = client.chat.completions.create(model=model, messages=user("same text please"))
        with client.chat.completions.stream(model=model, messages=user("same text please")) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_completion()
        a, b = whole.choices[0], streamed.choices[0]
        assert a.message.content == b.message.content
        assert a.finish_reason == b.finish_reason
        assert [(t.id, t.function.name, t.function.arguments) for t in a.message.tool_calls or []] == \
               [(t.id, t.function.name, t.function.arguments) for t in b.message.tool_calls or []]
        assert getattr(a.message, "reasoning_content", None) == getattr(b.message, "reasoning_content", None)


def test_stream_chunks_have_one_id_role_once_and_one_finish(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="up/gpt-test", messages=user("abc"), stream=True))
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert [c.choices[0].delta.role for c in chunks].count("assistant") == 1
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 1
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: abc"


def test_include_usage_adds_a_final_usage_chunk(gateway: ServerThread) -> None:
    body = {"model": "up/gpt-test", "messages": user("x"), "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all("usage" in p for p in payloads)
    assert all(p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["prompt_tokens"] == 11
    assert payloads[-1]["usage"]["total_tokens"] == 18


def test_unprefixed_routes(gateway: ServerThread) -> None:
    client = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0)
    assert client.chat.completions.create(model="echo", messages=user("no prefix")).choices[0].message.content \
        == "no prefix"
    assert any(m.id == "test/echo" for m in client.models.list())


def test_root_and_health(gateway: ServerThread) -> None:
    assert httpx.head(f"{gateway.url}/").status_code == 200
    assert httpx.get(f"{gateway.url}/").status_code == 200
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}


def test_cors_allows_any_origin_without_credentials(gateway: ServerThread) -> None:
    response = httpx.options(f"{gateway.url}/v1/chat/completions", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


# ------------------------------------------------------------------------------- upstream


def test_upstream_request_is_translated(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(
        model="up/gpt-test", messages=[{"role": "system", "content": "be brief"}, *user("hi")],
        max_completion_tokens=50, temperature=0.3, top_p=0.8, stop=["END"], seed=7,
        presence_penalty=0.5, frequency_penalty=0.25,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": {"type": "object"}}},
    )
    sent = fake.last()
    body = sent.body
    assert body["model"] == "gpt-test"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"], body["seed"]) == (50, 0.3, 0.8,
                                                                                                  ["END"], 7)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, 0.25)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "thing",
                                                                             "schema": {"type": "object"}}}
    assert sent.headers["authorization"] == "Bearer upstream-secret"


def test_openai_defaults_are_explicit_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(model="up/gpt-test", messages=user("defaults"))
    body = fake.last().body
    assert (body["temperature"], body["top_p"]) == (1.0, 1.0)


def test_images_pass_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.chat.completions.create(model="up/gpt-test", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}])
    content = fake.last().body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "what is this"}
    assert content[1] == {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}
    assert content[2] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def test_tool_calls_non_streaming_and_reply_turn(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    response = client.chat.completions.create(model="up/gpt-tools", messages=user("weather?"), tools=tools,
                                              tool_choice="auto")
    message = response.choices[0].message
    assert fake.last().body["tool_choice"] == "auto"
    assert response.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    calls = message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_time", {"tz": "UTC"})]
    follow_up = [*user("weather?"), message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "call_a", "content": "12C"},
                 {"role": "tool", "tool_call_id": "call_b", "content": "noon"}]
    client.chat.completions.create(model="up/gpt-test", messages=follow_up, tools=tools)
    sent = fake.last().body
    assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                               "arguments": '{"city": "Paris"}'}
    assert sent["messages"][1]["content"] is None
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_a", "content": "12C"}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_tool_call_deltas_are_shaped_like_openai(gateway: ServerThread) -> None:
    body = {"model": "up/gpt-tools", "messages": user("x"), "stream": True,
            "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10) as response:
        payloads = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in payloads
                 if c["choices"][0]["delta"].get("tool_calls")]
    firsts = [f for f in fragments if "id" in f]
    assert [(f["index"], f["id"], f["type"], f["function"]["name"]) for f in firsts] == [
        (0, "call_a", "function", "get_weather"), (1, "call_b", "function", "get_time")]
    for fragment in fragments:
        if "id" not in fragment:
            assert set(fragment) == {"index", "function"}
            assert set(fragment["function"]) == {"arguments"}
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_content_streamed_and_accepted_on_input(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    response = client.chat.completions.create(model="up/gpt-reason", messages=user("think"),
                                              reasoning_effort="high")
    message = response.choices[0].message
    assert message.content == "Answer."
    assert message.model_extra is not None and message.model_extra["reasoning_content"] == "Let me think."
    assert fake.last().body["reasoning_effort"] == "high"
    client.chat.completions.create(model="up/gpt-test", messages=[
        *user("think"), {"role": "assistant", "content": "Answer.", "reasoning_content": "Let me think."},
        *user("again")])
    assert fake.last().body["messages"][1] == {"role": "assistant", "content": "Answer."}


def test_inline_think_tags_are_split(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="up/gpt-think", messages=user("x"))
    message = response.choices[0].message
    assert message.content == "The answer."
    assert message.model_extra is not None and message.model_extra["reasoning_content"] == "Pondering deeply"


def test_split_chunks_and_crlf_are_decoded(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="up/gpt-split", messages=user("split me"))
    assert response.choices[0].message.content == "You said: split me"
    assert response.usage is not None and response.usage.total_tokens == 18


def test_eof_without_done_ends_cleanly(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="up/gpt-nodone", messages=user("bye"))
    assert response.choices[0].message.content == "You said: bye"
    chunks = list(client.chat.completions.create(model="up/gpt-nodone", messages=user("bye"), stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_legacy_completions(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    response = client.completions.create(model="up/gpt-test", prompt="Once", max_tokens=5)
    assert response.choices[0].text == "completed: Once"
    assert response.object == "text_completion"
    assert fake.last("/completions").body["max_tokens"] == 5
    streamed = "".join(c.choices[0].text for c in
                       client.completions.create(model="test/echo", prompt="one two three", stream=True))
    assert streamed == "one two three"
    default = client.completions.create(model="test/echo", prompt=" ".join(["w"] * 40))
    assert default.choices[0].finish_reason == "length"  # OpenAI's documented default of 16 tokens
    assert default.usage is not None and default.usage.completion_tokens == 16


def test_embeddings_float_and_base64(client: openai.OpenAI, gateway: ServerThread) -> None:
    via_sdk = client.embeddings.create(model="test/echo", input=["a b", "a b", "c"])  # SDK asks for base64
    vectors = [d.embedding for d in via_sdk.data]
    assert vectors[0] == pytest.approx(vectors[1]) and vectors[0] != pytest.approx(vectors[2])
    floats = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": "test/echo", "input": "a b",
                                                              "encoding_format": "float"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vectors[0], rel=1e-6)
    upstream = client.embeddings.create(model="up/text-embedding-test", input="abcd", dimensions=3)
    assert upstream.data[0].embedding == pytest.approx([4.0, 1.0, -0.5])
    dims = client.embeddings.create(model="test/echo", input="x", dimensions=8)
    assert len(dims.data[0].embedding) == 8


def test_models_list_and_retrieve_with_slash(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "up/gpt-test" in ids and "test/echo" in ids
    assert all(m.owned_by for m in client.models.list())
    assert client.models.retrieve("up/gpt-test").id == "up/gpt-test"


def test_forward_mode_passes_the_client_bearer(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(model="fwd/gpt-test", messages=user("hi"))
    assert fake.last().headers["authorization"] == "Bearer client-key"


# ---------------------------------------------------------------------------------- errors


def raw_post(gateway: ServerThread, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", content=content, timeout=10,
                      headers={"content-type": "application/json", **headers})


def assert_openai_error(response: httpx.Response, status: int, *, contains: str = "", param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert contains in error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(("body", "contains", "param"), [
    (b"{not json", "not valid JSON", None),
    (b"", "empty", None),
    (b"[1, 2]", "JSON object", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model: field required", "model"),
    (b'{"model": "echo"}', "messages: field required", "messages"),
    (b'{"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": 5}', "temperature", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 17}', "16", "n"),  # 16 at most
    (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}', "stream_options",
     "stream_options"),
    (b'{"model": "echo", "messages": [{"role": "tool", "content": "x"}]}', "tool_call_id", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
     b'{"url": "data:image/png;base64,@@@"}}]}]}', "base64", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
     b'{"url": "ftp://x/y.png"}}]}]}', "http(s) URL or a data: URL", None),
])
def test_bad_requests_are_400_never_422(gateway: ServerThread, body: bytes, contains: str, param: str | None) -> None:
    assert_openai_error(raw_post(gateway, "/v1/chat/completions", body), 400, contains=contains, param=param)


def test_sdk_sees_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=user("x"), temperature=3)
    assert info.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="echo", messages=user("x"), temperature=3, stream=True)


def test_unknown_model_is_404_listing_close_matches(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="up/gpt-tset", messages=user("x"))
    assert info.value.code == "model_not_found"
    assert "up/gpt-test" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope/nothing")


def test_body_too_large_is_413(gateway: ServerThread) -> None:
    big = json.dumps({"model": "echo", "messages": user("x" * 300_000)})
    assert_openai_error(raw_post(gateway, "/v1/chat/completions", big), 413, contains="larger than")


def test_unknown_route_and_method_are_json(gateway: ServerThread) -> None:
    assert_openai_error(httpx.get(f"{gateway.url}/v1/nothing"), 404, contains="route not found")
    assert_openai_error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


@pytest.mark.parametrize(("model", "exc", "status"), [
    ("up/gpt-error-400", openai.BadRequestError, 400),
    ("up/gpt-error-401", openai.AuthenticationError, 401),
    ("up/gpt-error-429", openai.RateLimitError, 429),
    ("up/gpt-error-500", openai.InternalServerError, 502),
    ("up/gpt-error-503", openai.InternalServerError, 503),
])
def test_upstream_errors_keep_status_and_message(client: openai.OpenAI, model: str, exc: type[Exception],
                                                 status: int) -> None:
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=model, messages=user("x"))
    error = info.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == status
    assert "fake upstream failure" in error.message
    if status == 429:
        assert error.response.headers["retry-after"] == "2"


def test_context_length_is_400_with_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="up/gpt-context", messages=user("x"))
    assert info.value.code == "context_length_exceeded"


def test_unreachable_upstream_is_503(gateway: ServerThread) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = {"backends": [{"name": "dead", "type": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                            "models": ["m"]}]}
    with dragoman_server(config) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="dead/m", messages=user("x"))
        assert info.value.status_code == 503
        assert "unreachable" in info.value.message


def test_upstream_that_never_answers_is_504(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="up/gpt-hang", messages=user("x"))
    assert info.value.status_code == 504
    assert time.monotonic() - started < 5


def test_error_after_stream_start_is_an_error_frame_then_done(gateway: ServerThread) -> None:
    for model, text in (("up/gpt-midstream-error", "upstream exploded"), ("up/gpt-stall", "stalled"),
                        ("up/gpt-eof", "closed the connection")):
        body = {"model": model, "messages": user("x"), "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][6:])["error"]
        assert text in error["message"], (model, error)
        assert set(error) == {"message", "type", "param", "code"}


def test_sdk_raises_on_midstream_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError, match="upstream exploded"):
        for _ in client.chat.completions.create(model="up/gpt-midstream-error", messages=user("x"), stream=True):
            pass


def test_non_streaming_midstream_failure_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="up/gpt-midstream-error", messages=user("x"))
    assert info.value.status_code == 502


# ----------------------------------------------------------------------------- cancellation


def test_client_disconnect_cancels_the_upstream(gateway: ServerThread, fake: FakeOpenAI) -> None:
    before = fake.disconnects
    body = {"model": "up/gpt-slow", "messages": user("a long answer " * 5), "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10) as response:
        for line in response.iter_lines():
            if "content" in line:
                break  # leave after the first token
    assert wait_until(lambda: fake.disconnects > before, timeout=5), "upstream stream was not cancelled"
    assert wait_until(lambda: fake.open_streams == 0, timeout=5)


def test_non_streaming_client_disconnect_cancels_the_upstream(gateway: ServerThread, fake: FakeOpenAI) -> None:
    before = fake.disconnects
    body = {"model": "up/gpt-slow", "messages": user("a long answer " * 5)}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=0.3)
    assert wait_until(lambda: fake.disconnects > before, timeout=5), "upstream request was not cancelled"
