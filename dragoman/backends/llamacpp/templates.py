"""Chat templates for local GGUF models, and parsing of tool calls out of generated text.

A model's own template (GGUF ``tokenizer.chat_template``, Jinja written for Hugging Face's
``apply_chat_template``) is rendered in a sandbox, with the variables HF passes. A file without
one gets a known template for its architecture; anything else is a clear 400 naming the model,
never a guess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dragoman.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
)
from dragoman.errors import ErrorKind, GatewayError

# Gemma: no system role; the system text opens the first user turn; the assistant is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\\n' + m.content | trim"
    " + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(slots=True, frozen=True)
class KnownTemplate:
    name: str
    source: str
    system_role: bool  # False: the system text is folded into the first user turn


GEMMA = KnownTemplate("gemma", GEMMA_TEMPLATE, system_role=False)
CHATML = KnownTemplate("chatml", CHATML_TEMPLATE, system_role=True)
LLAMA3 = KnownTemplate("llama3", LLAMA3_TEMPLATE, system_role=True)

_BY_ARCHITECTURE: dict[str, KnownTemplate] = {
    "gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA, "gemma3n": GEMMA,
    "qwen": CHATML, "qwen2": CHATML, "qwen2moe": CHATML, "qwen3": CHATML, "qwen3moe": CHATML,
}


def known_template(architecture: str, tokenizer_pre: str | None) -> KnownTemplate | None:
    """The template for a file without one. Plain ``llama`` is ambiguous (Llama 2, Mistral,
    Llama 3 ...): only Llama 3's tokenizer (``llama-bpe``) identifies its template."""
    if architecture == "llama" and tokenizer_pre == "llama-bpe":
        return LLAMA3
    return _BY_ARCHITECTURE.get(architecture)


@dataclass(slots=True, frozen=True)
class TemplateTraits:
    """What a template can do, read from its source."""

    tools: bool  # renders ``tools`` and we can parse its calls back (Hermes ``<tool_call>``)
    reasoning: bool


def template_traits(source: str | None) -> TemplateTraits:
    if not source:
        return TemplateTraits(tools=False, reasoning=False)
    return TemplateTraits(tools="tools" in source and "<tool_call>" in source, reasoning="<think>" in source)


# ----------------------------------------------------------------------------------- rendering


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return time.strftime(fmt)


class ChatTemplate:
    """A compiled template; ``render`` raises ``GatewayError(INVALID_REQUEST)`` naming the model."""

    __slots__ = ("_template", "known", "model", "source")

    def __init__(self, model: str, source: str, known: KnownTemplate | None = None) -> None:
        self.model = model
        self.source = source
        self.known = known
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"the chat template of model {model!r} is invalid: {exc}") from exc

    def render(self, request: ChatRequest, *, bos_token: str, eos_token: str, with_tools: bool) -> str:
        tools = request.tools if with_tools else []
        variables: dict[str, Any] = {
            "add_generation_prompt": True,
            "bos_token": bos_token,
            "eos_token": eos_token,
        }
        if self.known is not None:
            variables["messages"] = simple_turns(request.messages, tools, system_role=self.known.system_role)
        else:
            variables["messages"] = hf_messages(request.messages)
            if tools:
                variables["tools"] = [hf_tool(tool) for tool in tools]
            if request.reasoning.enabled is not None:
                variables["enable_thinking"] = request.reasoning.enabled
        try:
            return self._template.render(**variables)
        except TemplateError as exc:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"model {self.model!r} cannot render this conversation: {exc}") from exc


def _reject_images(message: Message) -> None:
    for part in message.parts:
        if isinstance(part, ImagePart) or (
            isinstance(part, ToolResultPart) and any(isinstance(p, ImagePart) for p in part.content)
        ):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "local models do not accept images", param="messages")


def _arguments(raw: str) -> Any:
    """HF templates expect tool-call arguments as a mapping; keep the text when it is not JSON."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw


def hf_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or {"type": "object",
                                                                                     "properties": {}}}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def hf_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Canonical messages in the shape HF chat templates read (OpenAI-like, string content)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        _reject_images(message)
        results = [p for p in message.parts if isinstance(p, ToolResultPart)]
        for result in results:
            item: dict[str, Any] = {"role": "tool", "content": result.text, "tool_call_id": result.tool_call_id}
            if result.name:
                item["name"] = result.name
            out.append(item)
        if results and not message.text:
            continue
        entry: dict[str, Any] = {"role": message.role.value, "content": message.text}
        if message.role is Role.TOOL:
            entry["role"] = "tool"
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        if calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in calls
            ]
        reasoning = "".join(p.text for p in message.parts if isinstance(p, ReasoningPart))
        if reasoning:
            entry["reasoning_content"] = reasoning
        if message.name:
            entry["name"] = message.name
        out.append(entry)
    return out


def tools_text(tools: list[Tool]) -> str:
    """Tools described in prose, for templates that have no place for them."""
    lines = ["You can use these tools; to call one, answer with a JSON object "
             '{"name": <tool name>, "arguments": <object>}:']
    for tool in tools:
        lines.append(json.dumps(hf_tool(tool)["function"], ensure_ascii=False))
    return "\n".join(lines)


def simple_turns(messages: list[Message], tools: list[Tool], *, system_role: bool) -> list[dict[str, str]]:
    """Flatten to alternating text turns for the known templates: system messages (and the
    tool descriptions) joined, tool calls and results written out as text, same-role turns merged."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        _reject_images(message)
        if message.role is Role.SYSTEM:
            system.append(message.text)
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        pieces: list[str] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                pieces.append(part.text)
            elif isinstance(part, ToolCallPart):
                pieces.append(json.dumps({"name": part.name, "arguments": _arguments(part.arguments)},
                                         ensure_ascii=False))
            elif isinstance(part, ToolResultPart):
                label = f"Result of tool {part.name}" if part.name else "Tool result"
                pieces.append(f"{label}:\n{part.text}")
        text = "\n".join(p for p in pieces if p)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if tools:
        system.append(tools_text(tools))
    system_text = "\n\n".join(s for s in system if s)
    if system_text:
        if system_role:
            turns.insert(0, {"role": "system", "content": system_text})
        elif turns and turns[0]["role"] == "user":
            turns[0]["content"] = system_text + "\n\n" + turns[0]["content"]
        else:
            turns.insert(0, {"role": "user", "content": system_text})
    return turns


def resolve_template(model: str, gguf_template: str | None, override: str | None, architecture: str,
                     tokenizer_pre: str | None) -> ChatTemplate | None:
    """The template to use: the configured override, the file's own, a known one, or None."""
    if override:
        return ChatTemplate(model, override)
    if gguf_template:
        return ChatTemplate(model, gguf_template)
    known = known_template(architecture, tokenizer_pre)
    return ChatTemplate(model, known.source, known) if known else None


# ------------------------------------------------------------------------------- tool calls out

OPEN_CALL = "<tool_call>"
CLOSE_CALL = "</tool_call>"


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text


Piece = str | ParsedCall


class ToolCallExtractor:
    """Split Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` out of a
    streamed text, holding back a partial tag; a call that does not parse stays text."""

    __slots__ = ("_buf", "_in_call")

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False

    def feed(self, delta: str) -> list[Piece]:
        out: list[Piece] = []
        self._buf += delta
        while self._buf:
            if self._in_call:
                end = self._buf.find(CLOSE_CALL)
                if end < 0:
                    break
                body, self._buf = self._buf[:end], self._buf[end + len(CLOSE_CALL):]
                self._in_call = False
                out.append(_parse_call(body) or f"{OPEN_CALL}{body}{CLOSE_CALL}")
                continue
            start = self._buf.find(OPEN_CALL)
            if start >= 0:
                if start:
                    out.append(self._buf[:start])
                self._buf = self._buf[start + len(OPEN_CALL):]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, OPEN_CALL)
            if len(self._buf) > keep:
                out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return out

    def flush(self) -> list[Piece]:
        """End of stream: an unterminated call is parsed if whole, else returned as text."""
        buf, self._buf = self._buf, ""
        if not self._in_call:
            return [buf] if buf else []
        self._in_call = False
        parsed = _parse_call(buf)
        return [parsed] if parsed else [OPEN_CALL + buf]


def _parse_call(body: str) -> ParsedCall | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        return ParsedCall(data["name"], arguments)
    return ParsedCall(data["name"], json.dumps(arguments, ensure_ascii=False))


def _partial_suffix(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0

