"""Anthropic Messages request bodies as pydantic models: validated once, lenient where clients are.

Unknown fields are allowed (``cache_control``, ``citations``, ``context_management``,
``service_tier`` ...): the converter keeps what an Anthropic backend sends on and other
backends ignore them. Known fields are typed and ranged so a bad value is a precise 400. Content blocks are
dispatched on ``type`` with a fallback model, so a block type dragoman does not serve gets
a message naming it instead of a wall of union errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)


class TextBlock(WireModel):
    type: Literal["text"]
    text: str


class Base64Source(WireModel):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(WireModel):
    type: Literal["url"]
    url: str


class OtherSource(WireModel):
    type: str


def _source_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("base64", "url") else "other"


ImageSource = Annotated[
    Annotated[Base64Source, Tag("base64")] | Annotated[URLSource, Tag("url")] | Annotated[OtherSource, Tag("other")],
    Discriminator(_source_tag),
]


class ImageBlock(WireModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class ThinkingBlock(WireModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(WireModel):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(WireModel):
    """A block type dragoman does not serve (documents, server tool results...): refused by name."""

    type: str


_RESULT_KINDS = ("text", "image")


def _result_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _RESULT_KINDS else "other"


ToolResultContent = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(_result_tag),
]


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None


_BLOCK_KINDS = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _BLOCK_KINDS else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


class MessageParam(WireModel):
    role: Literal["user", "assistant", "system"]  # system turns: API version 2026-10-21
    content: str | list[ContentBlock]


class ToolDefinition(WireModel):
    """A custom tool (``input_schema``) or, with a ``type`` such as ``web_search_20250305``, a server tool."""

    type: str | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(WireModel):
    """``enabled`` (with a budget), ``disabled``; any other type (``adaptive``, ``between_tools``,
    newer ones) means thinking on without a budget. The budget is not held to Anthropic's 1024
    minimum here: a local model may think less; the Anthropic backend raises it."""

    type: str = Field(min_length=1)
    budget_tokens: int | None = Field(None, ge=1)


class Metadata(WireModel):
    user_id: str | None = None


class OutputFormat(WireModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(WireModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class CountTokensRequest(WireModel):
    """``POST /v1/messages/count_tokens``: the messages body without ``max_tokens`` and ``stream``."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
