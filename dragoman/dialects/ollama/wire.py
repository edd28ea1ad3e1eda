"""Ollama request bodies as pydantic models, and the ``options`` table.

Lenient where real clients are (unknown fields ignored, ``tools: []``, ``images: []``, a string
``stop``); ``options`` is checked by hand against :data:`OPTION_TYPES` so a wrongly typed
known option is a 400 worded as Ollama words it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dragoman.core.limits import MAX_EMBEDDING_DIMENSIONS

# What /api/version reports: the Ollama API level this dialect speaks.
OLLAMA_VERSION = "0.12.6"

OptionType = Literal["integer", "float", "boolean", "array"]

# Known options (api/types.go ``Options`` + ``Runner``) and the JSON type each must have.
OPTION_TYPES: dict[str, OptionType] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "integer",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "array",
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "draft_num_predict": "integer",
}

# Options that map to canonical sampling fields; the rest ride in ``ChatRequest.options``.
SAMPLING_OPTIONS: dict[str, str] = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

ThinkLevel = Literal["low", "medium", "high", "max"]
THINK_LEVELS: tuple[str, ...] = ("low", "medium", "high", "max")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class ToolCallFunction(WireModel):
    name: str
    arguments: dict[str, Any] | str | None = None
    index: int | None = None


class ToolCall(WireModel):
    id: str | None = None
    function: ToolCallFunction


class ChatMessage(WireModel):
    role: str
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class FunctionDefinition(WireModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class _Generation(WireModel):
    model: str = ""
    stream: bool | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None


class ChatRequest(_Generation):
    messages: list[ChatMessage] | None = None
    tools: list[ToolDefinition] | None = None


class GenerateRequest(_Generation):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class EmbedRequest(WireModel):
    model: str = ""
    input: str | list[Any] | None = None
    truncate: bool | None = None
    dimensions: int | None = Field(None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class EmbeddingsRequest(WireModel):
    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class ShowRequest(WireModel):
    model: str | None = None
    name: str | None = None  # the older spelling, still sent by OllamaKit
    verbose: bool | None = None


# Request-body fields; any other top-level key naming an option is OllamaKit's misplaced option.
REQUEST_FIELDS = frozenset(ChatRequest.model_fields) | frozenset(GenerateRequest.model_fields)
