"""A backend of one's own: the example package ``examples/custom-backend`` is pip-installed (into a
folder put on ``sys.path``, so the test environment is left as it was), and its entry point makes
``type: bigram`` work in the config file, as ``type: python`` with ``class:`` does. The bigram model
is then driven through all three dialects with the official SDKs, streaming and whole, tools too.
A backend given in code (``create_app(backends=...)``) with an async generator is served the same way."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx
import ollama
import openai
import pytest
from pydantic import BaseModel

from dragoman.app import create_app
from dragoman.backends.base import BackendDeps
from dragoman.backends.model import ModelBackend, Output, Thinking, Usage
from dragoman.config import Config
from dragoman.core.types import ChatRequest
from dragoman.errors import ErrorKind, GatewayError
from tests.servers import ServerThread, dragoman_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-backend"
TOOL_OPENAI: Any = {"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                                     "parameters": {"type": "object",
                                                                    "properties": {"word": {"type": "string"}}}}}
TOOL_ANTHROPIC: Any = {"name": "lookup", "description": "Look a word up",
                       "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}}}
# The model's greedy walk over its text: after "the" comes "dog", then "sat", "on", "the", ...
SIX_AFTER_THE = "dog sat on the dog sat "


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example, installed by pip as a user would (from a copy: the build leaves files behind)."""
    work = tmp_path_factory.mktemp("custom-backend")
    source, target = work / "source", work / "site"
    shutil.copytree(EXAMPLE, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, timeout=120)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("dragoman_bigram", None)


@pytest.fixture(scope="module")
def gateway(installed: Path) -> Iterator[ServerThread]:
    config = {"backends": [
        {"name": "toy", "type": "bigram", "words": 6},
        {"name": "py", "type": "python", "class": "dragoman_bigram:BigramBackend", "settings": {"words": 3}},
    ]}
    with dragoman_server(config) as server:
        yield server


@pytest.fixture(scope="module")
def oa(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def an(gateway: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def ol(gateway: ServerThread) -> ollama.Client:
    return ollama.Client(host=gateway.url)


# ------------------------------------------------------------------------------------- OpenAI


def test_openai_whole_and_streamed(oa: openai.OpenAI) -> None:
    whole = oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": "pet the"}])
    assert whole.choices[0].message.content == SIX_AFTER_THE
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 6
    chunks = list(oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": "pet the"}],
                                             stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SIX_AFTER_THE
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_openai_models_list_the_backend(oa: openai.OpenAI) -> None:
    assert {"toy/bigram", "py/bigram"} <= {m.id for m in oa.models.list()}


def test_openai_tool_call_then_result(oa: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "what is a cat"}]
    first = oa.chat.completions.create(model="toy/bigram", messages=messages, tools=[TOOL_OPENAI])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"word": "cat"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "mat"}]
    second = oa.chat.completions.create(model="toy/bigram", messages=messages, tools=[TOOL_OPENAI])
    assert second.choices[0].message.content == ". the dog sat on the "  # the walk goes on from the result
    assert second.choices[0].finish_reason == "stop"


def test_openai_streamed_tool_call(oa: openai.OpenAI) -> None:
    chunks = list(oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": "a dog"}],
                                             tools=[TOOL_OPENAI], stream=True))
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function is not None and calls[0].function.name == "lookup" and calls[0].id
    assert json.loads("".join(t.function.arguments or "" for t in calls if t.function)) == {"word": "dog"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_stop_and_max_tokens(oa: openai.OpenAI) -> None:
    stopped = oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": "the"}],
                                         stop=["on"])
    assert stopped.choices[0].message.content == "dog sat " and stopped.choices[0].finish_reason == "stop"
    cut = oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": "the"}],
                                     max_tokens=2)
    assert cut.choices[0].message.content == "dog sat " and cut.choices[0].finish_reason == "length"


def test_type_python_with_class(oa: openai.OpenAI) -> None:
    answer = oa.chat.completions.create(model="py/bigram", messages=[{"role": "user", "content": "the"}])
    assert answer.choices[0].message.content == "dog sat on "  # its settings: three words


def test_what_the_model_cannot_do_is_a_400(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not accept images"):
        oa.chat.completions.create(model="toy/bigram", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])


# ---------------------------------------------------------------------------------- Anthropic


def test_anthropic_whole_and_streamed(an: anthropic.Anthropic) -> None:
    whole = an.messages.create(model="toy/bigram", max_tokens=100, messages=[{"role": "user", "content": "the"}])
    assert whole.content[0].type == "text" and whole.content[0].text == SIX_AFTER_THE
    assert whole.stop_reason == "end_turn" and whole.usage.output_tokens == 6
    with an.messages.stream(model="toy/bigram", max_tokens=100, messages=[{"role": "user", "content": "the"}]) as s:
        assert "".join(s.text_stream) == SIX_AFTER_THE
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"


def test_anthropic_tool_use(an: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "what is a log"}]
    with an.messages.stream(model="toy/bigram", max_tokens=100, tools=[TOOL_ANTHROPIC], messages=messages) as s:
        first = s.get_final_message()
    tool = first.content[0]
    assert tool.type == "tool_use" and tool.name == "lookup" and tool.input == {"word": "log"}
    assert first.stop_reason == "tool_use"
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "the"}]}]
    second = an.messages.create(model="toy/bigram", max_tokens=100, tools=[TOOL_ANTHROPIC], messages=messages)
    assert second.content[0].type == "text" and second.content[0].text == SIX_AFTER_THE


# ------------------------------------------------------------------------------------- Ollama


def test_ollama_whole_and_streamed(ol: ollama.Client) -> None:
    whole = ol.chat(model="toy/bigram", messages=[{"role": "user", "content": "the"}])
    assert whole.message.content == SIX_AFTER_THE and whole.done_reason == "stop" and whole.eval_count == 6
    parts = list(ol.chat(model="toy/bigram", messages=[{"role": "user", "content": "the"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == SIX_AFTER_THE
    assert parts[-1].done
    generated = ol.generate(model="py/bigram", prompt="the")
    assert generated.response == "dog sat on "


def test_ollama_tool_call(ol: ollama.Client) -> None:
    answer = ol.chat(model="toy/bigram", messages=[{"role": "user", "content": "find the mat"}], tools=[TOOL_OPENAI])
    calls = answer.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("lookup", {"word": "mat"})]


# ---------------------------------------------------------------------------------- admin UI

ADMIN = {"authorization": "Bearer admin-password-for-plugins-1"}


def test_admin_builds_installed_types_but_imports_no_code_it_names(installed: Path, tmp_path: Path) -> None:
    config = {"backends": [{"name": "py", "type": "python", "class": "dragoman_bigram:BigramBackend"}],
              "database": f"sqlite:///{tmp_path / 'dragoman.db'}",
              "auth": {"mode": "none", "admin_password": ADMIN["authorization"].removeprefix("Bearer ")}}
    with dragoman_server(config) as server, httpx.Client(base_url=server.url, headers=ADMIN) as admin:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10)
        assert {"bigram", "python", "openai"} <= set(admin.get("/admin/api/backends").json()["types"])
        created = admin.post("/admin/api/backends", json={"name": "toy2", "type": "bigram", "settings": {"words": 2}})
        assert created.status_code == 200, created.text
        answer = client.chat.completions.create(model="toy2/bigram", messages=[{"role": "user", "content": "the"}])
        assert answer.choices[0].message.content == "dog sat "
        bad = admin.post("/admin/api/backends", json={"name": "toy3", "type": "bigram", "settings": {"words": "x"}})
        assert bad.status_code == 400 and "words: Input should be a valid integer" in bad.json()["error"]["message"]
        refused = admin.post("/admin/api/backends", json={"name": "evil", "type": "python",
                                                           "settings": {"class": "dragoman_bigram:BigramBackend"}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "type"
        assert "only be set in the config file" in refused.json()["error"]["message"]
        swapped = admin.put("/admin/api/backends/py", json={"type": "python", "settings": {
            "class": "dragoman.backends.echo:EchoBackend"}})
        assert swapped.status_code == 400 and swapped.json()["error"]["param"] == "type"
        edited = admin.put("/admin/api/backends/py", json={"type": "python", "settings": {
            "class": "dragoman_bigram:BigramBackend", "settings": {"words": 1}}})
        assert edited.status_code == 200, edited.text
        answer = client.chat.completions.create(model="py/bigram", messages=[{"role": "user", "content": "the"}])
        assert answer.choices[0].message.content == "dog "


# ------------------------------------------------------------------------------ given in code


class EchoSettings(BaseModel):
    prefix: str = ""


class Thoughtful(ModelBackend):
    """An async generator that thinks first and reports its own usage; it records being closed."""

    Settings = EchoSettings
    settings: EchoSettings
    reasoning = True
    closed: ClassVar[list[str]] = []

    async def generate(self, request: ChatRequest) -> AsyncIterator[Output]:
        text = request.messages[-1].text
        try:
            yield Thinking(f"they said {text}")
            for word in text.split():
                yield self.settings.prefix + word + " "
            yield Usage(prompt_tokens=1, completion_tokens=len(text.split()))
        finally:
            Thoughtful.closed.append(text)


class Endless(ModelBackend):
    """A blocking generator that never ends by itself: only the client leaving stops it."""

    stopped = threading.Event()

    def generate(self, request: ChatRequest) -> Iterator[Output]:
        try:
            while True:
                time.sleep(0.01)
                yield "more "
        finally:
            Endless.stopped.set()


class Faulty(ModelBackend):
    """A model with a bug: it fails at once, or after a first word when asked for "late"; "huh?" is
    a request it refuses on purpose."""

    async def generate(self, request: ChatRequest) -> AsyncIterator[Output]:
        if request.messages[-1].text == "huh?":
            raise GatewayError(ErrorKind.INVALID_REQUEST, "a question mark is not a prompt", param="messages")
        if request.messages[-1].text == "late":
            yield "first "
        raise ValueError("a detail of the prompt that must not reach the client")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = Config.model_validate({"backends": [{"name": "echoed", "type": "mine", "prefix": "> "}],
                                     "auth": {"admin_password": ADMIN["authorization"].removeprefix("Bearer ")},
                                     "data_dir": str(tmp_path_factory.mktemp("embedded"))})
    app = create_app(config, backends=[Endless("endless", Endless.Settings(), BackendDeps()),
                                       Faulty("faulty", Faulty.Settings(), BackendDeps())],
                     backend_types={"mine": Thoughtful})
    with ServerThread(app) as server:
        yield server


def test_backends_and_types_given_in_code(embedded: ServerThread) -> None:
    client = openai.OpenAI(base_url=embedded.url + "/v1", api_key="unused", max_retries=0, timeout=10)
    answer = client.chat.completions.create(model="echoed", messages=[{"role": "user", "content": "hi there"}],
                                            reasoning_effort="low")
    message: Any = answer.choices[0].message
    assert message.content == "> hi > there "
    assert message.reasoning_content == "they said hi there"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1, 2)
    assert "hi there" in Thoughtful.closed


def test_backends_given_in_code_are_not_the_admins(embedded: ServerThread) -> None:
    with httpx.Client(base_url=embedded.url, headers=ADMIN) as admin:
        assert "endless" in {b["name"] for b in admin.get("/admin/api/backends").json()["backends"]}
        refused = admin.delete("/admin/api/backends/endless")
        assert refused.status_code == 400 and "built by the program that runs dragoman" in refused.text


def test_a_bug_in_the_model_is_a_500_without_details(embedded: ServerThread) -> None:
    client = openai.OpenAI(base_url=embedded.url + "/v1", api_key="unused", max_retries=0, timeout=10)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="faulty", messages=[{"role": "user", "content": "now"}])
    assert "model 'faulty' of backend 'faulty' failed (ValueError)" in str(info.value)
    assert "prompt" not in str(info.value)
    body = {"model": "faulty", "messages": [{"role": "user", "content": "late"}], "stream": True}
    with httpx.stream("POST", embedded.url + "/v1/chat/completions", json=body, timeout=10) as response:
        text = response.read().decode()
    assert response.status_code == 200 and '"first "' in text  # the stream had begun: the error comes in it
    assert "failed (ValueError)" in text and "prompt" not in text
    with pytest.raises(openai.BadRequestError, match="a question mark is not a prompt"):
        client.chat.completions.create(model="faulty", messages=[{"role": "user", "content": "huh?"}])


def test_client_leaving_stops_a_blocking_model(embedded: ServerThread) -> None:
    Endless.stopped.clear()
    body = {"model": "endless", "messages": [{"role": "user", "content": "go"}], "stream": True}
    with httpx.stream("POST", embedded.url + "/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if "more" in line:
                break
    assert Endless.stopped.wait(5), "the model's generator was not closed after the client left"
