"""The llama.cpp backend's pure parts: config, GGUF header, templates, tool calls, stops, queue.

None of these need llama-cpp-python or a model file.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dragoman.backends.llamacpp.engine import StopMatcher, sampling_kwargs
from dragoman.backends.llamacpp.gguf import GGUFError, human_parameters, read_gguf
from dragoman.backends.llamacpp.models import LlamaCppSettings, context_size, inspect_file, parse_duration
from dragoman.backends.llamacpp.slots import FifoGate
from dragoman.backends.llamacpp.templates import (
    CHATML,
    GEMMA,
    LLAMA3,
    ChatTemplate,
    ParsedCall,
    ToolCallExtractor,
    known_template,
    resolve_template,
    template_traits,
)
from dragoman.core.types import (
    ChatRequest,
    Message,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
)
from dragoman.errors import ErrorKind, GatewayError

# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("value", "seconds"), [
    (300, 300.0), (2.5, 2.5), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("90s", 90.0),
    ("250ms", 0.25), ("45", 45.0), ("0", 0.0), (-1, float("inf")), ("-1m", float("inf")),
])
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "", "1x", True, None, [1]])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_settings_defaults_and_validation() -> None:
    settings = LlamaCppSettings.model_validate({"models": [{"name": "a", "path": "a.gguf"}], "keep_alive": "10m"})
    assert (settings.max_queue, settings.keep_alive, settings.n_ctx) == (8, 600.0, 8192)
    bad = [
        {"models": [{"name": "a"}]},
        {"models": [{"name": "a", "path": "x.gguf", "hf": "o/r", "file": "x.gguf"}]},
        {"models": [{"name": "a", "hf": "o/r"}]},
        {"models": [{"name": "a", "path": "x.gguf", "file": "y.gguf"}]},
        {"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
        {"models": [], "max_queue": -1},
        {"models": [], "keep_alive": "soon"},
        {"models": [], "unknown": 1},
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            LlamaCppSettings.model_validate(data)


# -------------------------------------------------------------------------------------- GGUF


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, metadata: list[tuple[str, int, bytes]], tensors: list[list[int]]) -> None:
    """A GGUF v3 header: (key, type, encoded value) entries and tensors given by their dims."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += _string(key) + struct.pack("<I", kind) + value
    for index, dims in enumerate(tensors):
        out += _string(f"t{index}") + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, 0)
    path.write_bytes(out + b"\0" * 64)


def tiny_gguf(path: Path) -> None:
    tokens = b"".join(_string(t) for t in ["<s>", "</s>", "hello"])
    write_gguf(path, [
        ("general.architecture", 8, _string("qwen2")),
        ("general.file_type", 4, struct.pack("<I", 15)),
        ("qwen2.context_length", 4, struct.pack("<I", 32768)),
        ("qwen2.embedding_length", 4, struct.pack("<I", 896)),
        ("qwen2.block_count", 4, struct.pack("<I", 24)),
        ("qwen2.attention.head_count", 4, struct.pack("<I", 14)),
        ("qwen2.attention.head_count_kv", 4, struct.pack("<I", 2)),
        ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + tokens),
        ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, 0, 0)),
        ("tokenizer.ggml.add_bos_token", 7, b"\x01"),
        ("tokenizer.chat_template", 8, _string("{{ messages }}")),
    ], [[896, 151936], [896]])


def test_gguf_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tiny_gguf(path)
    info = read_gguf(path)
    assert info.architecture == "qwen2" and info.quantization == "Q4_K_M"
    assert (info.context_length, info.embedding_length) == (32768, 896)
    assert info.parameter_count == 896 * 151936 + 896
    assert info.chat_template == "{{ messages }}"
    assert info.metadata["tokenizer.ggml.add_bos_token"] is True
    assert info.array_lengths == {"tokenizer.ggml.tokens": 3, "tokenizer.ggml.scores": 3}
    assert info.kv_cache_bytes(1000) == 1000 * 24 * 2 * (64 + 64) * 2
    settings = LlamaCppSettings.model_validate({"models": [{"name": "m", "path": "m.gguf"}]})
    assert context_size(settings.models[0], settings, info) == 8192


@pytest.mark.parametrize(("content", "message"), [
    (b"GGML" + b"\0" * 40, "bad magic"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + _string("general.architecture"), "truncated"),
    (b"GG", "too small"),
])
def test_bad_gguf(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message):
        read_gguf(path)
    with pytest.raises(GatewayError) as info:
        inspect_file("bad", path, None)
    assert info.value.status == 503 and "'bad'" in info.value.message and str(path) in info.value.message


def test_human_parameters() -> None:
    assert human_parameters(268_098_176) == "268.10M"
    assert human_parameters(7_000_000_000) == "7B"
    assert human_parameters(1_543_714_304) == "1.5B"
    assert human_parameters(999) == "999"


# --------------------------------------------------------------------------------- templates


def conversation() -> ChatRequest:
    return ChatRequest(model="m", messages=[
        Message(Role.SYSTEM, [TextPart("Be brief.")]),
        Message(Role.USER, [TextPart("Weather in Paris?")]),
        Message(Role.ASSISTANT, [ToolCallPart("call_1", "get_weather", '{"city": "Paris"}')]),
        Message(Role.TOOL, [ToolResultPart("call_1", [TextPart("sunny")], name="get_weather")]),
        Message(Role.ASSISTANT, [TextPart("It is sunny.")]),
        Message(Role.USER, [TextPart("Thanks!")]),
    ])


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn() -> None:
    template = ChatTemplate("g", GEMMA.source, GEMMA)
    request = ChatRequest(model="g", messages=[Message(Role.SYSTEM, [TextPart("Be brief.")]),
                                               Message(Role.USER, [TextPart("Hi")]),
                                               Message(Role.ASSISTANT, [TextPart("Hello!")]),
                                               Message(Role.USER, [TextPart("Bye")])])
    text = template.render(request, bos_token="<bos>", eos_token="<eos>", with_tools=False)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_gemma_template_writes_tools_and_tool_turns_as_text() -> None:
    template = ChatTemplate("g", GEMMA.source, GEMMA)
    request = conversation()
    request.tools = [Tool("get_weather", "Weather now", {"type": "object"})]
    text = template.render(request, bos_token="<bos>", eos_token="<eos>", with_tools=True)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nYou can use these tools")
    assert '"name": "get_weather"' in text and "Weather in Paris?<end_of_turn>" in text
    assert '<start_of_turn>model\n{"name": "get_weather", "arguments": {"city": "Paris"}}<end_of_turn>' in text
    assert "<start_of_turn>user\nResult of tool get_weather:\nsunny<end_of_turn>" in text
    assert text.endswith("<start_of_turn>user\nThanks!<end_of_turn>\n<start_of_turn>model\n")


def test_chatml_and_llama3_templates() -> None:
    request = ChatRequest(model="q", messages=[Message(Role.SYSTEM, [TextPart("S")]),
                                               Message(Role.USER, [TextPart("U")])])
    chatml = ChatTemplate("q", CHATML.source, CHATML).render(request, bos_token="", eos_token="", with_tools=False)
    assert chatml == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    llama3 = ChatTemplate("l", LLAMA3.source, LLAMA3).render(request, bos_token="<|begin_of_text|>",
                                                             eos_token="", with_tools=False)
    assert llama3 == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_known_templates_by_architecture() -> None:
    assert known_template("gemma3", "default") is GEMMA
    assert known_template("qwen2", "qwen2") is CHATML
    assert known_template("llama", "llama-bpe") is LLAMA3
    assert known_template("llama", "default") is None  # Llama 2 or Mistral: no guessing
    assert resolve_template("m", None, None, "phi3", None) is None
    assert resolve_template("m", "{{ x }}", None, "gemma3", None).known is None  # type: ignore[union-attr]
    assert resolve_template("m", "{{ x }}", "{{ y }}", "gemma3", None).source == "{{ y }}"  # type: ignore[union-attr]


HERMES = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Call with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_embedded_template_gets_hf_messages_and_tools() -> None:
    assert template_traits(HERMES).tools and not template_traits(GEMMA.source).tools
    request = conversation()
    request.tools = [Tool("get_weather", "Weather now", {"type": "object", "properties": {}})]
    text = ChatTemplate("h", HERMES).render(request, bos_token="", eos_token="", with_tools=True)
    tool_line = json.dumps({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {}}, "description": "Weather now"}})
    assert tool_line in text
    assert ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text)
    assert "<|im_start|>tool\nsunny<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    plain = ChatTemplate("h", HERMES).render(request, bos_token="", eos_token="", with_tools=False)
    assert "# Tools" not in plain


def test_template_errors_name_the_model() -> None:
    with pytest.raises(GatewayError) as info:
        ChatTemplate("m", "{% for %}")
    assert info.value.kind is ErrorKind.INVALID_REQUEST and "'m'" in info.value.message
    request = conversation()
    for source in ("{{ raise_exception('roles must alternate') }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}"):
        with pytest.raises(GatewayError) as info:
            ChatTemplate("m", source).render(request, bos_token="", eos_token="", with_tools=False)
        assert info.value.kind is ErrorKind.INVALID_REQUEST and "'m'" in info.value.message


# -------------------------------------------------------------------------------- tool calls


def test_tool_calls_are_split_out_of_streamed_text() -> None:
    extractor = ToolCallExtractor()
    text = 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call> done'
    pieces: list[Any] = []
    for i in range(0, len(text), 3):
        pieces += extractor.feed(text[i:i + 3])
    pieces += extractor.flush()
    calls = [p for p in pieces if isinstance(p, ParsedCall)]
    assert calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    assert "".join(p for p in pieces if isinstance(p, str)) == "Let me check.  done"
    assert not any("<tool" in p for p in pieces if isinstance(p, str) and p != "Let me check. ")


def test_unparseable_or_unfinished_calls_stay_text() -> None:
    extractor = ToolCallExtractor()
    assert extractor.feed("<tool_call>not json</tool_call>") == ["<tool_call>not json</tool_call>"]
    extractor = ToolCallExtractor()
    assert extractor.feed('<tool_call>{"name": "f", "arguments": "{}"}') == []
    assert extractor.flush() == [ParsedCall("f", "{}")]
    extractor = ToolCallExtractor()
    assert extractor.feed("a <tool_ca") == ["a "]
    assert extractor.flush() == ["<tool_ca"]


# --------------------------------------------------------------------------- stops, sampling


def test_stop_matcher_holds_back_a_possible_start() -> None:
    matcher = StopMatcher(["END", "\n\n"])
    assert matcher.feed("hello E") == ("hello ", None)
    assert matcher.feed("N") == ("", None)
    assert matcher.feed("X more\n") == ("ENX more", None)
    assert matcher.feed("\nafter") == ("", "\n\n")
    matcher = StopMatcher(["abc", "b"])
    assert matcher.feed("xabc") == ("x", "abc")  # the earliest match wins
    matcher = StopMatcher(["zz"])
    assert matcher.feed("z") == ("", None)
    assert matcher.flush() == "z"
    assert StopMatcher([]).feed("anything") == ("anything", None)


def test_sampling_defaults_fill_what_the_request_left_unset() -> None:
    assert sampling_kwargs(Sampling()) == {"temp": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                                           "repeat_penalty": 1.0, "presence_penalty": 0.0,
                                           "frequency_penalty": 0.0}
    given = sampling_kwargs(Sampling(temperature=0.0, top_k=5, top_p=0.5, min_p=0.0, repeat_penalty=1.1,
                                     presence_penalty=0.5, frequency_penalty=0.25))
    assert given == {"temp": 0.0, "top_k": 5, "top_p": 0.5, "min_p": 0.0, "repeat_penalty": 1.1,
                     "presence_penalty": 0.5, "frequency_penalty": 0.25}


# ------------------------------------------------------------------------------------- queue


async def test_fifo_gate_serves_in_order_and_bounds_the_queue() -> None:
    gate = FifoGate(2, "m")
    await gate.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        await gate.acquire()
        order.append(n)

    first = asyncio.create_task(wait(1))
    second = asyncio.create_task(wait(2))
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as info:
        await gate.acquire()
    assert info.value.kind is ErrorKind.RATE_LIMITED and "queue is full (2 waiting for m)" in info.value.message
    assert not gate.try_acquire()
    gate.release()
    await first
    gate.release()
    await second
    gate.release()
    assert order == [1, 2] and not gate.busy


async def test_fifo_gate_cancelled_waiters_leave_the_queue() -> None:
    gate = FifoGate(2, "m")
    await gate.acquire()
    cancelled = asyncio.create_task(gate.acquire())
    after = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert gate.waiting == 1
    gate.release()
    await after
    assert gate.busy
    gate.release()
    assert not gate.busy


async def test_fifo_gate_close_fails_the_waiters() -> None:
    gate = FifoGate(2, "m")
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.close(GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "shutting down"))
    with pytest.raises(GatewayError, match="shutting down"):
        await waiter
    assert gate.waiting == 0
