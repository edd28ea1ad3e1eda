"""``api: chat | responses`` per model: one ``type: openai`` backend whose upstream serves some models
through Chat Completions and others only through the Responses API (the fake OpenAI upstream and the
fake Responses upstream behind one base URL), driven by the official ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dragoman.backends.openai import OpenAISettings
from tests.fakes import openai_upstream, responses_upstream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.responses_upstream import FakeResponsesUpstream
from tests.servers import ServerThread, dragoman_server


@pytest.fixture(scope="module")
def chat() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def responses() -> FakeResponsesUpstream:
    return FakeResponsesUpstream()


def one_upstream(chat: FakeOpenAI, responses: FakeResponsesUpstream) -> Starlette:
    """Both fakes behind one base URL, listing both fakes' models."""
    async def models(request: Request) -> Response:
        names = [*openai_upstream.MODELS, *responses_upstream.MODELS]
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "created": 1700000000,
                                                         "owned_by": "fake"} for n in names]})

    return Starlette(routes=[Route("/v1/models", models, methods=["GET"]),
                             Route("/v1/responses", responses.responses, methods=["POST"]),
                             Mount("/", chat.app())])


@pytest.fixture(scope="module")
def gateway(chat: FakeOpenAI, responses: FakeResponsesUpstream) -> Iterator[ServerThread]:
    with ServerThread(one_upstream(chat, responses)) as upstream, dragoman_server({
            "backends": [
                {"name": "mixed", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
                 "models": ["gpt-test", {"name": "resp-*", "api": "responses"}]},
                # The other way round: a Responses backend with one model served through chat.
                {"name": "mixed-r", "type": "openai", "api": "responses", "base_url": f"{upstream.url}/v1",
                 "api_key": "upstream-secret", "models": ["resp-text", "gpt-test"], "model_api": {"gpt-*": "chat"}}],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 2}}) as server:
        yield server


@pytest.fixture()
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=10)


def test_each_model_reaches_the_upstream_api_it_is_configured_for(client: openai.OpenAI, chat: FakeOpenAI,
                                                                    responses: FakeResponsesUpstream) -> None:
    for backend in ("mixed", "mixed-r"):
        before_chat, before_responses = len(chat.requests), len(responses.requests)
        through_responses = client.chat.completions.create(model=f"{backend}/resp-text",
                                                           messages=[{"role": "user", "content": "hello"}])
        assert through_responses.choices[0].message.content == "You said: hello"
        assert len(responses.requests) == before_responses + 1
        assert responses.last().body["store"] is False and responses.last().body["model"] == "resp-text"
        through_chat = client.chat.completions.create(model=f"{backend}/gpt-test",
                                                      messages=[{"role": "user", "content": "hi"}])
        assert through_chat.choices[0].message.content == "You said: hi"
        assert chat.last().body["messages"] == [{"role": "user", "content": "hi"}]
        assert len(responses.requests) == before_responses + 1  # the chat model never went there
        assert len([r for r in chat.requests[before_chat:] if r.path.endswith("/chat/completions")]) == 1


def test_streams_and_the_responses_dialect_over_both(client: openai.OpenAI) -> None:
    for model, expected in (("mixed/resp-text", "You said: streamed"), ("mixed/gpt-test", "You said: streamed")):
        chunks = list(client.chat.completions.create(model=model, stream=True,
                                                     messages=[{"role": "user", "content": "streamed"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        with client.responses.stream(model=model, input="streamed") as stream:
            assert stream.get_final_response().output_text == expected


def test_hosted_tools_pass_only_to_the_responses_model(gateway: ServerThread, responses: FakeResponsesUpstream,
                                                       chat: FakeOpenAI) -> None:
    body = {"input": "search it", "tools": [{"type": "web_search"}]}
    passed = httpx.post(f"{gateway.url}/v1/responses", json={**body, "model": "mixed/resp-search"}, timeout=10)
    assert passed.status_code == 200, passed.text
    assert "x-dragoman-dropped-tools" not in passed.headers
    assert responses.last().body["tools"] == [{"type": "web_search"}]
    dropped = httpx.post(f"{gateway.url}/v1/responses", json={**body, "model": "mixed/gpt-test"}, timeout=10)
    assert dropped.status_code == 200, dropped.text
    assert dropped.headers["x-dragoman-dropped-tools"] == "web_search"
    assert "tools" not in chat.last().body


def test_raw_completions_are_refused_for_a_responses_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="mixed/resp-text", prompt="x")
    assert "Responses API" in caught.value.message
    assert client.completions.create(model="mixed/gpt-test", prompt="x").choices[0].text


def test_the_models_entry_shape() -> None:
    settings = OpenAISettings.model_validate({"base_url": "http://x/v1", "models": [
        "gpt-*", {"name": "o3-pro*", "api": "responses"}, {"name": "plain"}]})
    assert settings.models == ["gpt-*", "o3-pro*", "plain"]
    assert settings.model_api == {"o3-pro*": "responses"}
    assert settings.api_of("o3-pro-2025", "chat") == "responses"
    assert settings.api_of("gpt-4o", "chat") == "chat" and settings.api_of("gpt-4o", "responses") == "responses"
    with pytest.raises(ValueError):
        OpenAISettings.model_validate({"base_url": "http://x/v1", "models": [{"name": "m", "api": "soap"}]})
