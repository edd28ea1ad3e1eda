"""Ollama wire <-> canonical conversion, both directions, as pure functions."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from dragoman.backends.ollama import (
    OllamaSettings,
    build_chat_body,
    build_generate_body,
    model_info,
    think_value,
    wire_messages,
)
from dragoman.core.events import MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.models import ModelDetails, ModelEntry, ModelInfo
from dragoman.core.types import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    Reasoning,
    ReasoningPart,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from dragoman.dialects.ollama import convert
from dragoman.dialects.ollama.stream import LineEncoder, Timing
from dragoman.errors import GatewayError

# ------------------------------------------------------------------------------ options


def test_options_map_to_sampling_and_backend_options() -> None:
    sampling, extra = convert.parse_options({}, {
        "num_predict": 128, "temperature": 0, "top_k": 20.0, "top_p": 0.5, "min_p": 0.05, "seed": 7,
        "stop": ["a", "b"], "repeat_penalty": 1.1, "presence_penalty": 0.2, "frequency_penalty": 0.3,
        "num_ctx": 4096, "num_gpu": 1, "use_mmap": False, "mirostat": 2, "tfs_z": 1.0, "penalize_newline": True,
        "whatever": "x", "typical_p": None,
    })
    assert sampling == Sampling(temperature=0.0, top_p=0.5, top_k=20, min_p=0.05, max_tokens=128,
                                stop=["a", "b"], seed=7, presence_penalty=0.2, frequency_penalty=0.3,
                                repeat_penalty=1.1)
    assert extra == {"num_ctx": 4096, "num_gpu": 1, "use_mmap": False}


@pytest.mark.parametrize(("value", "expected"), [(-1, None), (-2, None), (0, 0), (10.9, 10)])
def test_num_predict(value: float, expected: int | None) -> None:
    assert convert.parse_options({}, {"num_predict": value})[0].max_tokens == expected


def test_stop_string_and_top_level_options() -> None:
    body = {"model": "m", "temperature": 0.1, "stop": "END", "top_p": 0.2, "options": {"top_p": 0.9}}
    sampling, _ = convert.parse_options(body, {"top_p": 0.9})
    assert (sampling.temperature, sampling.stop, sampling.top_p) == (0.1, ["END"], 0.9)
    # Request fields are never read as options.
    assert convert.parse_options({"format": "json", "keep_alive": 5}, None) == (Sampling(), {})


def test_negative_seed_is_random() -> None:
    assert convert.parse_options({}, {"seed": -1})[0].seed is None


@pytest.mark.parametrize(("options", "message"), [
    ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
    ({"seed": False}, 'option "seed" must be of type integer'),
    ({"top_p": "0.5"}, 'option "top_p" must be of type float'),
    ({"use_mmap": "yes"}, 'option "use_mmap" must be of type boolean'),
    ({"stop": {"a": 1}}, 'option "stop" must be of type array'),
    ({"stop": [None]}, 'option "stop" must be an array of strings'),
])
def test_wrong_option_types(options: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayError) as info:
        convert.parse_options({}, options)
    assert info.value.status == 400 and info.value.message == message


# ---------------------------------------------------------------------------- requests


def test_chat_defaults_and_fields() -> None:
    parsed = convert.parse_chat({
        "model": "m", "messages": [{"role": "USER", "content": "hi", "images": []}], "tools": [],
        "format": {"type": "object"}, "think": "high", "keep_alive": "10m", "options": {"num_ctx": 2048}})
    request = parsed.request
    assert request.stream is True and not parsed.load
    assert request.defaults.temperature == 0.8 and request.defaults.top_p == 0.9 and request.defaults.top_k == 40
    assert request.messages == [Message(Role.USER, [TextPart("hi")])]
    assert request.tools == []
    assert request.response_format is not None and request.response_format.schema == {"type": "object"}
    assert request.reasoning == Reasoning(enabled=True, effort="high")
    assert request.options == {"num_ctx": 2048, "keep_alive": "10m"}
    assert convert.parse_chat({"model": "m", "messages": [], "stream": False}).request.stream is False


@pytest.mark.parametrize(("think", "expected"), [
    (None, Reasoning()), (True, Reasoning(enabled=True)), (False, Reasoning(enabled=False)),
    ("low", Reasoning(enabled=True, effort="low")), ("max", Reasoning(enabled=True, effort="max")),
])
def test_think(think: bool | str | None, expected: Reasoning) -> None:
    assert convert.parse_think(think) == expected


def test_history_tool_calls_get_stable_ids_and_pair_with_results() -> None:
    messages = convert.parse_chat({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}},
            {"id": "call_given", "function": {"name": "c", "arguments": '{"raw": true}'}}]},
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "C", "tool_call_id": "call_given"},
        {"role": "tool", "content": "A"},
        {"role": "tool", "content": "orphan", "tool_name": "z"},
    ]}).request.messages
    assert messages[1].parts == [
        ReasoningPart(text="hmm"), ToolCallPart("call_1_0", "a", '{"x":1}'), ToolCallPart("call_1_1", "b", "{}"),
        ToolCallPart("call_given", "c", '{"raw": true}')]
    results = [m.parts[0] for m in messages[2:]]
    assert [(r.tool_call_id, r.name, r.text) for r in results if isinstance(r, ToolResultPart)] == [
        ("call_1_1", "b", "B"), ("call_given", "c", "C"), ("call_1_0", "a", "A"), ("call_5", "z", "orphan")]


def test_images_are_decoded_and_sniffed() -> None:
    png = b"\x89PNG\r\n\x1a\n0000"
    encoded = "iVBORw0KGgowMDAw"
    parsed = convert.parse_chat({"model": "m", "messages": [
        {"role": "user", "content": "", "images": [encoded, "data:image/webp;base64," + encoded]}]})
    assert parsed.request.messages[0].parts == [ImagePart(data=png, media_type="image/png"),
                                                ImagePart(data=png, media_type="image/webp")]
    with pytest.raises(GatewayError, match=r"messages\[0\].images: images are only allowed"):
        convert.parse_chat({"model": "m", "messages": [{"role": "system", "content": "", "images": [encoded]}]})


def test_generate_shapes() -> None:
    chat = convert.parse_generate({"model": "m", "prompt": "p", "system": "s"}).request
    assert chat.prompt is None and [m.role for m in chat.messages] == [Role.SYSTEM, Role.USER]
    raw = convert.parse_generate({"model": "m", "prompt": "p", "raw": True}).request
    assert (raw.prompt, raw.suffix, raw.messages) == ("p", None, [])
    fim = convert.parse_generate({"model": "m", "prompt": "def f(", "suffix": "return x"}).request
    assert (fim.prompt, fim.suffix) == ("def f(", "return x")
    load = convert.parse_generate({"model": "m", "keep_alive": "0s"})
    assert load.load and load.unload


@pytest.mark.parametrize(("value", "zero"), [(0, True), (0.0, True), ("0", True), ("0s", True), ("0m", True),
                                             ("5m", False), (-1, False), (None, False), ("10", False)])
def test_zero_duration(value: float | str | None, zero: bool) -> None:
    assert convert.is_zero_duration(value) is zero


# --------------------------------------------------------------------------- responses


def test_timestamp_has_nanoseconds() -> None:
    assert convert.timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$", convert.timestamp())


def test_tag_body_synthesises_missing_facts() -> None:
    entry = ModelEntry(id="alias", backend="b", info=ModelInfo(name="m", details=ModelDetails(family="llama")))
    body = convert.tag_body(entry, 1_700_000_000.5)
    assert body["digest"] == convert.tag_body(entry, 0)["digest"] and len(body["digest"]) == 64
    assert body["modified_at"] == "2023-11-14T22:13:20.500000000Z"
    assert body["details"] == {"parent_model": "", "format": "", "family": "llama", "families": ["llama"],
                               "parameter_size": "", "quantization_level": ""}


def test_ps_body() -> None:
    info = ModelInfo(name="m", context_length=2048, details=ModelDetails(size=5, digest="sha256:" + "a" * 64))
    body = convert.ps_body(ModelEntry(id="local/m", backend="local", info=info, loaded=True,
                                      expires_at=1_700_000_000.0), 0.0)
    assert body == {"name": "local/m", "model": "local/m", "size": 5, "digest": "a" * 64,
                    "details": convert.details_body(info), "expires_at": "2023-11-14T22:13:20.000000000Z",
                    "size_vram": 0, "context_length": 2048}
    unknown = convert.ps_body(ModelEntry(id="local/m", backend="local", info=info, loaded=True), 1_700_000_000.0)
    assert unknown["expires_at"] == "2023-11-14T22:18:20.000000000Z"


def test_model_info_hides_token_tables_unless_verbose() -> None:
    info = ModelInfo(name="m", context_length=4096, extra={"general.architecture": "qwen2",
                                                           "tokenizer.ggml.tokens": ["a", "b"], "error": "x"})
    assert convert.model_info(info, verbose=False) == {"general.architecture": "qwen2",
                                                       "tokenizer.ggml.tokens": None, "qwen2.context_length": 4096}
    assert convert.model_info(info, verbose=True)["tokenizer.ggml.tokens"] == ["a", "b"]


def lines_of(events: list[Any], *, generate: bool = False) -> list[dict[str, Any]]:
    encoder = LineEncoder("m", Timing(0.0), generate=generate)
    out = []
    for event in events:
        line = encoder.encode(event)
        if line:
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            out.append(orjson.loads(line))
    return out


def test_encoder_buffers_tool_calls_and_ends_with_metrics() -> None:
    lines = lines_of([
        MessageStart("id", "m", 0), PartStart(0, "reasoning"), PartDelta(0, "hm"), PartEnd(0),
        PartStart(1, "text"), PartDelta(1, "Hi"), PartEnd(1),
        PartStart(2, "tool_call", tool_call_id="call_1", tool_name="f"), PartDelta(2, '{"a":'), PartDelta(2, "1}"),
        PartEnd(2), PartStart(3, "tool_call", tool_call_id="call_2", tool_name="g"), PartDelta(3, "not json"),
        PartEnd(3), MessageEnd(FinishReason.TOOL_CALLS, Usage(3, 4)),
    ])
    assert [line["message"] for line in lines] == [
        {"role": "assistant", "content": "", "thinking": "hm"},
        {"role": "assistant", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_2", "function": {"index": 1, "name": "g", "arguments": {}}}]},
        {"role": "assistant", "content": ""},
    ]
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (3, 4)
    assert list(final)[:5] == ["model", "created_at", "message", "done_reason", "done"]


def test_encoder_generate_and_errors() -> None:
    from dragoman.errors import ErrorKind

    lines = lines_of([MessageStart("id", "m", 0), PartStart(0, "text"), PartDelta(0, "x"), PartEnd(0),
                      MessageEnd(FinishReason.LENGTH, Usage()),
                      StreamError(GatewayError(ErrorKind.UPSTREAM_ERROR, "boom"))], generate=True)
    assert lines[0]["response"] == "x" and lines[1]["response"] == "" and lines[1]["done_reason"] == "length"
    assert lines[2] == {"error": "boom"}


# ----------------------------------------------------------------------------- backend


def test_backend_chat_body() -> None:
    settings = OllamaSettings(options={"num_ctx": 8192, "temperature": 0.1}, keep_alive="1h")
    request = ChatRequest(
        model="x", messages=[], sampling=Sampling(temperature=0.5, max_tokens=9, stop=["s"], top_k=3),
        tools=[Tool("a", "d", {"type": "object"}), Tool("b")], tool_choice=ToolChoice(mode="tool", name="b"),
        reasoning=Reasoning(enabled=True), options={"num_ctx": 1024, "keep_alive": 0, "unrelated": 1},
    )
    body = build_chat_body(request, "llama3:latest", settings, [])
    assert body == {"model": "llama3:latest", "messages": [], "stream": True,
                    "tools": [{"type": "function", "function": {"name": "b"}}], "think": True,
                    "options": {"num_ctx": 1024, "temperature": 0.5, "num_predict": 9, "top_k": 3, "stop": ["s"]},
                    "keep_alive": 0}
    request.tool_choice = ToolChoice(mode="none")
    assert "tools" not in build_chat_body(request, "m", settings, [])
    raw = build_generate_body(ChatRequest(model="x", messages=[], prompt="p"), "m", OllamaSettings())
    assert raw == {"model": "m", "prompt": "p", "stream": True, "raw": True}


@pytest.mark.parametrize(("reasoning", "think"), [
    (Reasoning(), None), (Reasoning(enabled=False), False), (Reasoning(enabled=True, effort="none"), False),
    (Reasoning(enabled=True), True), (Reasoning(enabled=True, effort="minimal"), "low"),
    (Reasoning(enabled=True, effort="medium"), "medium"), (Reasoning(enabled=True, effort="xhigh"), "max"),
    (Reasoning(enabled=True, budget_tokens=20000), "max"), (Reasoning(enabled=True, budget_tokens=1000), "low"),
])
def test_think_value(reasoning: Reasoning, think: bool | str | None) -> None:
    assert think_value(reasoning) == think


async def test_backend_messages() -> None:
    messages = [
        Message(Role.SYSTEM, [TextPart("sys")]),
        Message(Role.USER, [TextPart("look"), ImagePart(data=b"abc", media_type="image/png")]),
        Message(Role.ASSISTANT, [ReasoningPart("why"), TextPart("ok"), ToolCallPart("call_9", "f", '{"a": 1}'),
                                 ToolCallPart("call_8", "g", "oops")]),
        Message(Role.USER, [ToolResultPart("call_9", [TextPart("42")]), TextPart("and?")]),
    ]
    assert await wire_messages(messages, None) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "look", "images": ["YWJj"]},
        {"role": "assistant", "content": "ok", "thinking": "why",
         "tool_calls": [{"id": "call_9", "function": {"name": "f", "arguments": {"a": 1}}},
                        {"id": "call_8", "function": {"name": "g", "arguments": {}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_9", "tool_name": "f"},
        {"role": "user", "content": "and?"},
    ]
    with pytest.raises(GatewayError, match="image URLs cannot be fetched"):
        await wire_messages([Message(Role.USER, [ImagePart(url="https://example.com/a.png")])], None)


def test_backend_model_info() -> None:
    tag = {"name": "llava:latest", "model": "llava:latest", "size": 10, "digest": "abc",
           "modified_at": "2024-05-01T10:00:00.123456789-07:00",
           "details": {"family": "llama", "families": ["llama", "clip"], "parameter_size": "7B",
                       "quantization_level": "Q4_0", "format": "gguf"}}
    show = {"capabilities": ["completion", "vision"], "template": "{{ .Prompt }}", "license": "L",
            "model_info": {"general.architecture": "llama", "llama.context_length": 4096,
                           "llama.embedding_length": 4096}}
    info = model_info("llava:latest", tag, show, {"tools": True})
    assert info.context_length == 4096 and info.embedding_length == 4096
    caps = info.capabilities
    assert (caps.chat, caps.vision, caps.tools, caps.reasoning, caps.embeddings) == (True, True, True, False, False)
    assert info.details.modified_at == 1714582800.0 and info.created == 1714582800
    assert (info.details.family, info.details.families, info.details.license) == ("llama", ["llama", "clip"], "L")
    old = model_info("llava:latest", tag, {}, {})  # /api/show unavailable: inferred
    assert old.capabilities.vision and old.capabilities.tools and old.context_length is None
