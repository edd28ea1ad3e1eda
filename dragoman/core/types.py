"""The canonical, dialect-neutral request and response model.

A superset of the OpenAI, Ollama and Anthropic shapes: messages hold typed parts; tool-call
arguments stay raw JSON text, never re-serialised; reasoning keeps its signature byte-exact;
anything dialect-specific that must survive a round trip rides in ``extensions``, which the
core carries and never interprets.

These are plain slotted dataclasses rather than pydantic models: they are built once per
request from an already validated wire model, and they sit on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


# ---------------------------------------------------------------------------------------- parts


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    """An image as bytes (``data``) or as a URL the gateway has not fetched yet (``url``)."""

    data: bytes | None = None
    url: str | None = None
    media_type: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class ToolCallPart:
    id: str
    name: str
    arguments: str  # raw JSON text exactly as the model produced it


@dataclass(slots=True)
class ToolResultPart:
    tool_call_id: str
    content: list[TextPart | ImagePart]
    name: str | None = None  # the tool's name, needed by Ollama (``tool_name``)
    is_error: bool = False

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class ReasoningPart:
    """Model reasoning. ``signature`` and ``redacted`` must round-trip byte-exact (Anthropic)."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None  # opaque data of a redacted_thinking block


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart | ReasoningPart


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]
    name: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


# ------------------------------------------------------------------------------------- request


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema
    strict: bool | None = None


@dataclass(slots=True)
class ToolChoice:
    """``auto`` | ``none`` | ``required`` (Anthropic "any") | ``tool`` (then ``name``)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None
    parallel: bool = True


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
EFFORT_LEVELS: dict[str, ReasoningEffort] = {level: level for level in get_args(ReasoningEffort)}


def effort_level(value: str) -> ReasoningEffort | None:
    """``value`` as an effort level; None when it names none."""
    return EFFORT_LEVELS.get(value)

# Budgets used when an effort must become a token budget (Anthropic) and back.
EFFORT_BUDGETS: dict[ReasoningEffort, int] = {
    "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 32768,
}


@dataclass(slots=True)
class Reasoning:
    """One setting for ``reasoning_effort``, Ollama ``think`` and Anthropic ``thinking``.

    ``enabled`` None means the client said nothing (backend default); ``effort`` and
    ``budget_tokens`` refine it when given. ``exclude`` hides reasoning from the reply.
    """

    enabled: bool | None = None
    effort: ReasoningEffort | None = None
    budget_tokens: int | None = None
    exclude: bool = False

    def effective_effort(self) -> ReasoningEffort | None:
        if self.enabled is False:
            return "none"
        if self.effort:
            return self.effort
        if self.budget_tokens is not None:
            for level, budget in EFFORT_BUDGETS.items():
                if self.budget_tokens <= budget:
                    return level
            return "max"
        return "medium" if self.enabled else None

    def effective_budget(self) -> int | None:
        if self.enabled is False:
            return None
        if self.budget_tokens is not None:
            return self.budget_tokens
        effort = self.effective_effort()
        return EFFORT_BUDGETS.get(effort) if effort else None


@dataclass(slots=True)
class Sampling:
    """Generation parameters; ``None`` means "not given" (a dialect fills its defaults)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    # Beyond OpenAI's: what llama.cpp, vLLM and text-generation-webui accept.
    typical_p: float | None = None
    mirostat: int | None = None  # 0 off, 1 Mirostat, 2 Mirostat 2.0
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit
    grammar: str | None = None  # GBNF the answer must match


@dataclass(slots=True)
class ChatRequest:
    """A chat (or, with ``prompt`` set, a raw text completion) request.

    ``sampling`` holds only what the client set; ``defaults`` the client dialect's documented
    defaults. The gateway merges them (request > per-model override > dialect default) so a
    backend receives explicit values. ``options`` holds backend-level knobs that no dialect
    models but some backend honours (``num_ctx``, ``keep_alive``, ``raw``, Ollama options, and ``context``: the
    token ids an Ollama ``/api/generate`` client sends back, which the local runtime reads before the prompt);
    ``extensions`` holds dialect-specific data keyed by dialect name.
    """

    model: str
    messages: list[Message]
    stream: bool = False
    sampling: Sampling = field(default_factory=Sampling)  # what the client asked for
    defaults: Sampling = field(default_factory=Sampling)  # the client dialect's documented defaults
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning = field(default_factory=Reasoning)
    include_usage: bool = False
    prompt: str | None = None  # raw completion: no chat template
    suffix: str | None = None  # fill-in-the-middle text after the completion
    user: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    logprobs: int | None = None  # None: none; k >= 0: each answer token's, with its k likeliest alternatives
    # How many choices the client wants from this one request (OpenAI's ``n``). A backend that can
    # answer them all at once (``type: openai``) does, and says so in ``MessageStart.choices``; the
    # others answer one, and the dialect asks for the rest one at a time.
    n: int = 1

    @property
    def system_text(self) -> str:
        return "\n\n".join(m.text for m in self.messages if m.role is Role.SYSTEM)

    @property
    def has_images(self) -> bool:
        for message in self.messages:
            for part in message.parts:
                if isinstance(part, ImagePart):
                    return True
                if isinstance(part, ToolResultPart) and any(isinstance(p, ImagePart) for p in part.content):
                    return True
        return False


# ------------------------------------------------------------------------------------ response


class FinishReason(StrEnum):
    STOP = "stop"  # natural end of turn
    STOP_SEQUENCE = "stop_sequence"  # a requested stop string matched
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # counted by dragoman because the backend gave no figures

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    created: int
    parts: list[Part]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    context: list[int] | None = None  # token ids of prompt and answer (``MessageEnd.context``)
    logprobs: list[dict[str, Any]] | None = None  # ``Logprobs`` entries, when the request asked

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def reasoning_text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, ReasoningPart))

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        return [p for p in self.parts if isinstance(p, ToolCallPart)]


# ---------------------------------------------------------------------------------- tokenizing


@dataclass(slots=True)
class Tokenized:
    """A prompt as the model's token ids (``POST /tokenize``)."""

    tokens: list[int]
    max_model_len: int | None = None


# ---------------------------------------------------------------------------------- embeddings


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    dimensions: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    vectors: list[list[float]]
    usage: Usage
