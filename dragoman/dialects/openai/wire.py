"""OpenAI request bodies as pydantic models: validated once, lenient where real clients are.

Unknown fields are allowed (clients send many newer ones) and ignored; known fields are
typed and ranged so a bad value is a precise 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dragoman.core.limits import MAX_EMBEDDING_DIMENSIONS
from dragoman.core.types import ReasoningEffort as Effort

# The most generations one request may ask for (``n``, times the prompts of a completion): they
# run one after another, so this bounds what one request can hold a model for.
MAX_CHOICES = 16


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(WireModel):
    url: str
    detail: str | None = None


class TextContent(WireModel):
    type: Literal["text"]
    text: str


class ImageContent(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL | str


class OtherContent(WireModel):
    type: Literal["input_audio", "file", "refusal"]


ContentPart = Annotated[TextContent | ImageContent | OtherContent, Field(discriminator="type")]


class FunctionCall(WireModel):
    name: str
    arguments: str | dict[str, Any] = ""


class ToolCall(WireModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ReasoningDetail(WireModel):
    """OpenRouter's ``reasoning_details`` entries: how signed reasoning rides on OpenAI messages."""

    type: str
    text: str | None = None
    signature: str | None = None
    data: str | None = None


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    reasoning_details: list[ReasoningDetail] | None = None


class FunctionDefinition(WireModel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JSONSchemaFormat(WireModel):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ReasoningConfig(WireModel):
    """OpenRouter-style ``reasoning`` object."""

    effort: Effort | None = None
    enabled: bool | None = None
    exclude: bool | None = None
    max_tokens: int | None = Field(None, ge=0)


class ExtraSampling(WireModel):
    """Sampling fields beyond OpenAI's, as llama.cpp's server, vLLM and text-generation-webui name them."""

    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    typical_p: float | None = Field(None, gt=0, le=1)
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_mode: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = Field(None, gt=0)
    mirostat_eta: float | None = Field(None, gt=0)
    grammar: str | None = Field(None, min_length=1)


class ChatCompletionRequest(ExtraSampling):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Effort | None = None
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    think: bool | Literal["low", "medium", "high"] | None = None  # Ollama's spelling, as some clients send it
    logit_bias: dict[str, float] | None = None


class CompletionRequest(ExtraSampling):
    model: str = Field(min_length=1)
    prompt: str | list[str]
    suffix: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    logit_bias: dict[str, float] | None = None
    best_of: int | None = Field(None, ge=1)
    user: str | None = None


class EmbeddingRequest(WireModel):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    user: str | None = None


class TokenizeRequest(WireModel):
    """``POST /tokenize`` as vLLM and llama.cpp's server take it (``content`` is llama.cpp's name for
    ``prompt``; ``add_special_tokens`` vLLM's for ``add_special``)."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    content: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special: bool | None = None
    add_special_tokens: bool | None = None


class DetokenizeRequest(WireModel):
    model: str = Field(min_length=1)
    tokens: list[int]
