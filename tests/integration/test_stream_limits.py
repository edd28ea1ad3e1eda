"""Streams that end honestly, and bounded: each misbehaving upstream (tests/fakes) in each wire
format, seen through the official SDKs, with the exact error the client gets and the usage row.

* An answer cut short by a clean EOF before its protocol's finish (OpenAI ``finish_reason``,
  Ollama ``done: true``, Anthropic ``message_stop``) is an upstream error, never a normal end.
* A request ends by its total deadline (``timeouts.total``, a model's, an override's
  ``request_timeout``), even while the upstream keeps sending; the error names the limit.
* A stream line longer than ``max_frame_bytes`` ends the call with an upstream error.
* Client-chosen sizes that drive work are bounded, and big work leaves the event loop free.

Before the first byte an error is an HTTP status; after it, an error frame in the stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import AppServices
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server

GIANT = 16 << 20  # longer than the default max_frame_bytes (8 MiB)
TIGHT = 1 << 20
DEADLINE = 1.5


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[ServerThread, ServerThread, ServerThread]]:
    apps = (FakeOpenAI(giant_line_bytes=GIANT).app(), FakeOllama(giant_line_bytes=GIANT).app(),
            FakeAnthropic(giant_line_bytes=GIANT).app())
    with ServerThread(apps[0]) as up, ServerThread(apps[1]) as ol, ServerThread(apps[2]) as an:
        yield up, ol, an


def config(upstreams: tuple[ServerThread, ServerThread, ServerThread], directory: Path, **extra: Any) -> dict[str, Any]:
    up, ol, an = upstreams
    return {
        "backends": [
            {"name": "up", "type": "openai", "base_url": f"{up.url}/v1",
             "models": ["gpt-test", "gpt-nofinish", "gpt-nodone", "gpt-drip", "gpt-giant", "gpt-stall", "gpt-hang"]},
            {"name": "tight", "type": "openai", "base_url": f"{up.url}/v1", "models": ["gpt-giant"],
             "max_frame_bytes": TIGHT},
            {"name": "ol", "type": "ollama", "base_url": ol.url, "models": ["*"]},
            {"name": "an", "type": "anthropic", "base_url": an.url, "api_key": "sk-ant-test",
             "models": ["claude-text", "claude-nostop", "claude-drip", "claude-giant"]},
            {"name": "echo", "type": "echo", "models": ["echo"]},
        ],
        "routing": {"retries": 0, "health_interval": 0},
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
        "database": f"sqlite:///{directory / 'usage.db'}",
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(upstreams: tuple[ServerThread, ServerThread, ServerThread],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    overrides = {"up/gpt-drip": {"request_timeout": DEADLINE}, "an/claude-*": {"request_timeout": DEADLINE}}
    models = [
        {"name": "ollama-drip", "deployments": ["ol/drip"], "timeouts": {"total": DEADLINE}},
        {"name": "hang", "deployments": ["up/gpt-hang"], "timeouts": {"first_byte": 1}},
        {"name": "stall", "deployments": ["up/gpt-stall"], "timeouts": {"idle": 1}},
    ]
    directory = tmp_path_factory.mktemp("limits")
    with dragoman_server(config(upstreams, directory, overrides=overrides, models=models)) as server:
        yield server


@pytest.fixture()
def oai(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=30)


@pytest.fixture()
def claude(gateway: ServerThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=30)


@pytest.fixture()
def olc(gateway: ServerThread) -> ollama.Client:
    return ollama.Client(host=gateway.url, timeout=30)


def user(text: str = "abc") -> list[Any]:
    return [{"role": "user", "content": text}]


def usage_row(server: ServerThread, model: str, dialect: str) -> tuple[int, str | None]:
    """(status, error type) of the newest usage row for ``model`` asked in ``dialect``."""
    services: AppServices = server.app_state.services  # type: ignore[attr-defined]
    control = services.control
    assert control is not None
    found: list[Any] = []

    def arrived() -> bool:
        server.run_coroutine(control.recorder.flush())
        rows = server.run_coroutine(control.usage_store.recent(limit=200))
        found[:] = [r for r in rows if r.requested_model == model and r.dialect == dialect]
        return bool(found)

    assert wait_until(arrived, 10), f"no usage row for {model} ({dialect})"
    newest = max(found, key=lambda r: r.ts)
    return newest.status, newest.error_type


def sse_data(response: httpx.Response) -> list[Any]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in response.iter_lines() if line.startswith("data: ")]


# ------------------------------------------------------------------------ honest ends

CUT_OPENAI = "upstream 'up' closed the stream before the answer finished (no finish_reason)"
CUT_OLLAMA = "upstream 'ol' closed the stream before the answer finished (no line with done: true)"
CUT_ANTHROPIC = "upstream 'an' closed the stream before the message ended (no message_stop)"


def test_openai_stream_without_finish_reason_ends_in_an_error_frame(oai: openai.OpenAI,
                                                                    gateway: ServerThread) -> None:
    body = {"model": "up/gpt-nofinish", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=30) as response:
        frames = sse_data(response)
    assert response.status_code == 200
    assert "".join(f["choices"][0]["delta"].get("content") or "" for f in frames[:-2]) == "The answer is cut short"
    assert all(f["choices"][0]["finish_reason"] is None for f in frames[:-2])  # nothing claims a normal end
    assert frames[-2:] == [{"error": {"message": CUT_OPENAI, "type": "api_error", "param": None,
                                      "code": "upstream_error"}}, "[DONE]"]
    with pytest.raises(openai.APIError) as caught:
        list(oai.chat.completions.create(model="up/gpt-nofinish", messages=user(), stream=True))
    assert caught.value.message == CUT_OPENAI
    assert usage_row(gateway, "up/gpt-nofinish", "openai") == (502, "upstream_error")


def test_openai_stream_with_finish_reason_but_no_done_is_a_normal_finish(oai: openai.OpenAI,
                                                                         gateway: ServerThread) -> None:
    chunks = list(oai.chat.completions.create(model="up/gpt-nodone", messages=user("bye"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: bye"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert usage_row(gateway, "up/gpt-nodone", "openai") == (200, None)


def test_ollama_stream_without_done_line_is_an_error(olc: ollama.Client, oai: openai.OpenAI,
                                                     gateway: ServerThread) -> None:
    parts: list[str] = []
    with pytest.raises(ollama.ResponseError) as streamed:
        for chunk in olc.chat(model="ol/nodone", messages=user(), stream=True):
            assert not chunk.done
            parts.append(chunk.message.content or "")
    assert "".join(parts) == "You said: abc"
    assert streamed.value.error == CUT_OLLAMA
    assert usage_row(gateway, "ol/nodone", "ollama") == (502, "upstream_error")
    with pytest.raises(ollama.ResponseError) as whole:  # before the first byte: an HTTP status
        olc.chat(model="ol/nodone", messages=user(), stream=False)
    assert (whole.value.status_code, whole.value.error) == (502, CUT_OLLAMA)
    with pytest.raises(openai.InternalServerError) as other_dialect:
        oai.chat.completions.create(model="ol/nodone", messages=user())
    assert other_dialect.value.status_code == 502 and other_dialect.value.message == f"Error code: 502 - {CUT_OLLAMA}"


def test_anthropic_stream_without_message_stop_is_an_error(claude: anthropic.Anthropic,
                                                           gateway: ServerThread) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as streamed, \
            claude.messages.stream(model="an/claude-nostop", max_tokens=10, messages=user()) as stream:
        texts.extend(stream.text_stream)
    assert "".join(texts) == "Hello from Claude"
    assert streamed.value.body == {"type": "error", "error": {"type": "api_error", "message": CUT_ANTHROPIC}}
    assert usage_row(gateway, "an/claude-nostop", "anthropic") == (502, "upstream_error")
    with pytest.raises(anthropic.InternalServerError) as whole:
        claude.messages.create(model="an/claude-nostop", max_tokens=10, messages=user())
    assert whole.value.status_code == 502
    assert whole.value.body["error"] == {"type": "api_error", "message": CUT_ANTHROPIC}  # type: ignore[index]


# ----------------------------------------------------------------------- total deadline


def total_timeout(seconds: float, setting: str) -> str:
    return f"request timed out (total timeout of {seconds:g}s, {setting})"


def test_endless_openai_stream_ends_at_the_override_request_timeout(oai: openai.OpenAI,
                                                                    gateway: ServerThread) -> None:
    began = time.monotonic()
    parts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oai.chat.completions.create(model="up/gpt-drip", messages=user(), stream=True):
            parts.extend(c.delta.content or "" for c in chunk.choices)
    elapsed = time.monotonic() - began
    assert DEADLINE <= elapsed < DEADLINE + 2
    assert "".join(parts).startswith("drip drip")
    assert caught.value.message == total_timeout(DEADLINE, "overrides['up/gpt-drip'].request_timeout")
    assert usage_row(gateway, "up/gpt-drip", "openai") == (504, "timeout")


def test_dripping_whole_answer_ends_at_the_deadline_naming_it(oai: openai.OpenAI) -> None:
    """The upstream's JSON body keeps arriving (a space every 0.1 s): not a stall, the total limit."""
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(model="up/gpt-drip", messages=user())
    assert DEADLINE <= time.monotonic() - began < DEADLINE + 2
    assert caught.value.status_code == 504
    assert caught.value.body == {"message": total_timeout(DEADLINE, "overrides['up/gpt-drip'].request_timeout"),
                                 "type": "timeout_error", "param": None, "code": "timeout"}


def test_endless_anthropic_stream_ends_at_the_deadline(claude: anthropic.Anthropic, gateway: ServerThread) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, \
            claude.messages.stream(model="an/claude-drip", max_tokens=10, messages=user()) as stream:
        texts.extend(stream.text_stream)
    assert "".join(texts).startswith("drip drip")
    assert caught.value.body == {"type": "error", "error": {
        "type": "timeout_error", "message": total_timeout(DEADLINE, "overrides['an/claude-*'].request_timeout")}}
    assert usage_row(gateway, "an/claude-drip", "anthropic") == (504, "timeout")


def test_endless_ollama_stream_ends_at_its_models_total(olc: ollama.Client, gateway: ServerThread) -> None:
    began = time.monotonic()
    parts: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        for chunk in olc.chat(model="ollama-drip", messages=user(), stream=True):
            parts.append(chunk.message.content or "")
    assert DEADLINE <= time.monotonic() - began < DEADLINE + 2
    assert "".join(parts).startswith("drip drip")
    assert caught.value.error == total_timeout(DEADLINE, "models['ollama-drip'].timeouts.total")
    assert usage_row(gateway, "ollama-drip", "ollama") == (504, "timeout")
    with pytest.raises(ollama.ResponseError) as whole:  # a whole answer: nothing was sent, an HTTP status
        olc.chat(model="ollama-drip", messages=user(), stream=False)
    assert (whole.value.status_code, whole.value.error) == (
        504, total_timeout(DEADLINE, "models['ollama-drip'].timeouts.total"))


def test_the_global_total_ends_an_endless_stream(upstreams: tuple[ServerThread, ServerThread, ServerThread],
                                                 tmp_path: Path) -> None:
    settings = config(upstreams, tmp_path)
    settings["timeouts"]["total"] = DEADLINE
    with dragoman_server(settings) as server:
        client = ollama.Client(host=server.url, timeout=30)
        with pytest.raises(ollama.ResponseError) as caught:
            list(client.generate(model="ol/drip", prompt="x", stream=True))
    assert caught.value.error == total_timeout(DEADLINE, "timeouts.total")


def test_first_byte_and_idle_timeouts_name_their_setting(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as silent:
        oai.chat.completions.create(model="hang", messages=user())
    assert silent.value.status_code == 504
    assert silent.value.message == ("Error code: 504 - upstream 'up' sent no answer in time "
                                    "(first-byte timeout of 1s, models['hang'].timeouts.first_byte)")
    with pytest.raises(openai.APIError) as stalled:
        list(oai.chat.completions.create(model="stall", messages=user(), stream=True))
    assert stalled.value.message == ("upstream 'up' stalled mid-answer "
                                     "(idle timeout of 1s, models['stall'].timeouts.idle)")


# ------------------------------------------------------------------------- frame size

TOO_LONG = "upstream {!r} sent a stream line longer than {} bytes (max_frame_bytes)"


@pytest.mark.parametrize(("model", "limit"), [("up/gpt-giant", 8 << 20), ("tight/gpt-giant", TIGHT)])
def test_a_giant_sse_line_ends_the_openai_stream(oai: openai.OpenAI, gateway: ServerThread,
                                                 model: str, limit: int) -> None:
    began = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        list(oai.chat.completions.create(model=model, messages=user(), stream=True))
    assert caught.value.message == TOO_LONG.format(model.split("/")[0], limit)
    assert time.monotonic() - began < 10
    assert usage_row(gateway, model, "openai") == (502, "upstream_error")


def test_a_giant_ndjson_line_is_an_upstream_error(olc: ollama.Client, gateway: ServerThread) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        olc.chat(model="ol/giant", messages=user(), stream=False)
    assert (caught.value.status_code, caught.value.error) == (502, TOO_LONG.format("ol", 8 << 20))
    assert usage_row(gateway, "ol/giant", "ollama") == (502, "upstream_error")


def test_a_giant_anthropic_event_is_an_upstream_error(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(model="an/claude-giant", max_tokens=10, messages=user())
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "api_error", "message": TOO_LONG.format("an", 8 << 20)}


# ------------------------------------------------------------------------ bounded work


def test_embedding_dimensions_are_bounded(oai: openai.OpenAI, olc: ollama.Client) -> None:
    with pytest.raises(openai.BadRequestError) as openai_error:
        oai.embeddings.create(model="echo/echo", input="x", dimensions=3_000_000)
    assert openai_error.value.body == {"message": "dimensions: Input should be less than or equal to 16384",
                                       "type": "invalid_request_error", "param": "dimensions", "code": None}
    with pytest.raises(ollama.ResponseError) as ollama_error:
        olc.embed(model="echo/echo", input="x", dimensions=1_099_511_627_776)
    assert (ollama_error.value.status_code, ollama_error.value.error) == (
        400, "dimensions: Input should be less than or equal to 16384")


def test_embedding_inputs_are_bounded(oai: openai.OpenAI, olc: ollama.Client) -> None:
    with pytest.raises(openai.BadRequestError) as openai_error:
        oai.embeddings.create(model="echo/echo", input=["x"] * 2049)
    assert openai_error.value.body == {"message": "input holds 2049 texts; at most 2048 are allowed per request",
                                       "type": "invalid_request_error", "param": "input", "code": None}
    with pytest.raises(ollama.ResponseError) as ollama_error:
        olc.embed(model="echo/echo", input=["x"] * 2049)
    assert ollama_error.value.status_code == 400
    assert ollama_error.value.error == "input holds 2049 texts; at most 2048 are allowed per request"


def test_stop_sequences_are_bounded(oai: openai.OpenAI, olc: ollama.Client, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        claude.messages.create(model="echo/echo", max_tokens=10, messages=user(),
                               stop_sequences=[f"s{i}" for i in range(17)])
    assert anthropic_error.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error", "message": "stop_sequences holds 17 sequences; at most 16 are allowed"}
    with pytest.raises(ollama.ResponseError) as ollama_error:
        olc.chat(model="echo/echo", messages=user(), options={"stop": ["x" * 257]})
    assert (ollama_error.value.status_code, ollama_error.value.error) == (
        400, "options.stop[0] is 257 characters long; at most 256 are allowed")
    with pytest.raises(openai.BadRequestError) as openai_error:
        oai.chat.completions.create(model="echo/echo", messages=user(), stop="y" * 300)
    assert openai_error.value.body == {"message": "stop[0] is 300 characters long; at most 256 are allowed",
                                       "type": "invalid_request_error", "param": "stop", "code": None}


def test_health_answers_while_big_embeddings_are_built(oai: openai.OpenAI, gateway: ServerThread) -> None:
    """256 vectors of 16384 values (allowed): built and encoded off the event loop."""
    done = threading.Event()
    result: list[Any] = []

    def embed() -> None:
        try:
            result.append(oai.embeddings.create(model="echo/echo", input=[f"text {i}" for i in range(256)],
                                                dimensions=16_384))
        finally:
            done.set()

    worker = threading.Thread(target=embed)
    worker.start()
    waits: list[float] = []
    probes_during = 0
    while not done.is_set():
        began = time.monotonic()
        assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200
        waits.append(time.monotonic() - began)
        probes_during += not done.is_set()
        time.sleep(0.02)
    worker.join()
    [response] = result
    assert len(response.data) == 256 and all(len(d.embedding) == 16_384 for d in response.data)
    assert probes_during >= 3, "the embeddings request ended before /health could be probed during it"
    assert max(waits) < 0.5, f"/health waited {max(waits):.2f}s while embeddings were built"
