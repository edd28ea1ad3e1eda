"""Responses API request bodies (``POST /v1/responses``) as pydantic models.

Validated once, lenient where real clients are: unknown fields are ignored (Codex and the Agents
SDK send newer ones), known fields are typed and ranged so a bad value is a precise 400. Input
items and tools are discriminated on ``type``; an "easy" message may leave ``type`` out, and so
may an item reference.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from dragoman.core.types import ReasoningEffort as Effort


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------ content parts


class InputText(WireModel):
    type: Literal["input_text"]
    text: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(WireModel):
    type: Literal["input_file"]


class OutputText(WireModel):
    type: Literal["output_text"]
    text: str


class Refusal(WireModel):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[InputText | InputImage | InputFile | OutputText | Refusal, Field(discriminator="type")]
ToolOutputPart = Annotated[InputText | InputImage | InputFile, Field(discriminator="type")]


# -------------------------------------------------------------------------------- input items


class MessageItem(WireModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None


class FunctionCallItem(WireModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    namespace: str | None = None
    id: str | None = None


class FunctionCallOutputItem(WireModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ToolOutputPart]


class SummaryText(WireModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningText(WireModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(WireModel):
    type: Literal["reasoning"]
    id: str | None = None  # Codex leaves ids out when it replays reasoning
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class CustomToolCallItem(WireModel):
    type: Literal["custom_tool_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: str
    namespace: str | None = None
    id: str | None = None


class CustomToolCallOutputItem(WireModel):
    type: Literal["custom_tool_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ToolOutputPart]


class ItemReference(WireModel):
    type: Literal["item_reference"] = "item_reference"
    id: str


class OtherItem(WireModel):
    """A hosted tool's item (``web_search_call``, ``mcp_call``...): refused by name, not by schema."""

    model_config = ConfigDict(extra="allow")
    type: str


_ITEM_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "custom_tool_call",
                        "custom_tool_call_output", "item_reference"})


def _item_tag(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None:
            return "item_reference" if "id" in value and "role" not in value else "message"
        return kind if kind in _ITEM_TAGS else "other"
    return str(getattr(value, "type", "other"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[CustomToolCallItem, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItem, Tag("custom_tool_call_output")]
    | Annotated[ItemReference, Tag("item_reference")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]


# -------------------------------------------------------------------------------------- tools


class FunctionTool(WireModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomFormat(WireModel):
    type: Literal["text", "grammar"] = "text"
    syntax: str | None = None
    definition: str | None = None


class CustomTool(WireModel):
    type: Literal["custom"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    format: CustomFormat | None = None


NamespaceMember = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamespaceTool(WireModel):
    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    tools: list[NamespaceMember] = Field(min_length=1)


class HostedTool(WireModel):
    """A tool OpenAI runs itself (``web_search``, ``file_search``, ``mcp``...), kept whole."""

    model_config = ConfigDict(extra="allow")
    type: str


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "custom", "namespace") else "hosted"


ToolSpec = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[CustomTool, Tag("custom")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_tag),
]


# ------------------------------------------------------------------------------ text, reasoning


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(WireModel):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # the deprecated spelling


# ------------------------------------------------------------------------------------ request


class CreateResponse(WireModel):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool | None = False
    store: bool | None = True
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    parallel_tool_calls: bool | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
