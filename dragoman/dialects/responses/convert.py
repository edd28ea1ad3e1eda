"""Responses wire -> canonical: the create request becomes a ``ChatRequest``.

Input items fold into canonical messages (an assistant turn's reasoning, text and calls become one
assistant message; each call output a tool message). Tools become canonical functions: a custom
(freeform) tool is a function with one string argument ``input``, a namespace's tools are
functions named ``<namespace>__<tool>``; :class:`ToolNames` maps the model's calls back. Hosted
tools (``web_search``...) are kept aside: only an upstream that speaks the Responses API runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from dragoman.core.images import parse_data_url
from dragoman.core.types import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    Reasoning,
    ReasoningPart,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
)
from dragoman.dialects.responses import wire
from dragoman.dialects.validation import validated
from dragoman.errors import ErrorKind, GatewayError

# The Responses API's documented defaults.
DEFAULTS = Sampling(temperature=1.0, top_p=1.0)
NAMESPACE_SEPARATOR = "__"
CUSTOM_INPUT = "input"  # the one argument of a custom tool carried as a function
INCLUDE_VALUES = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
})
MAX_METADATA = 16


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param)


@dataclass(slots=True)
class ToolNames:
    """How the client declared each canonical function, to render the model's calls back."""

    custom: set[str] = field(default_factory=set)
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # canonical -> (namespace, name)

    def is_custom(self, canonical: str) -> bool:
        return canonical in self.custom

    def client_name(self, canonical: str) -> tuple[str | None, str]:
        """(namespace or None, name) as the client knows the tool."""
        found = self.namespaced.get(canonical)
        return found if found is not None else (None, canonical)


def canonical_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def custom_arguments(text: str) -> str:
    """A custom tool's raw input as the JSON arguments of its one-string-argument function."""
    return orjson.dumps({CUSTOM_INPUT: text}).decode()


def custom_input(arguments: str) -> str:
    """The raw input back from those arguments (a model that wrote something else keeps its text)."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str):
        return str(value[CUSTOM_INPUT])
    return arguments


@dataclass(slots=True)
class ResponsesRequest:
    """A parsed create request: the canonical request plus what the answer must repeat or map back."""

    chat: ChatRequest
    body: wire.CreateResponse
    names: ToolNames
    history: list[Message]  # the conversation (previous turns and this input), without ``instructions``
    hosted_tools: list[dict[str, Any]]  # hosted tools stay in ``chat.extensions["responses"]["tools"]``
    hosted_choice: str | None  # the type of a hosted tool that ``tool_choice`` forces
    client_tools: list[dict[str, Any]]  # the tools as sent, for the response object
    include_encrypted: bool
    summary: bool  # reasoning is shown as a summary (``reasoning.summary`` set), else as reasoning text
    raw_input: Any = None  # ``input`` as sent, kept for ``GET /v1/responses/{id}/input_items``

    @property
    def store(self) -> bool:
        return self.body.store is not False

    def without_hosted_tools(self) -> None:
        """Drop the hosted tools (the model cannot run them): they leave the echo too."""
        self.client_tools = [t for t in self.client_tools if t.get("type") in ("function", "custom", "namespace")]
        self.chat.extensions["responses"]["tools"] = self.client_tools


def parse_create(body: Any, previous: list[Message] | None = None) -> ResponsesRequest:
    """The request; ``previous`` is the stored conversation ``previous_response_id`` names."""
    req = validated(wire.CreateResponse, body)
    for name, what in (("conversation", "conversation objects"), ("prompt", "prompt templates")):
        if getattr(req, name):
            raise _bad(f"{what} are not supported by this gateway", name)
    include = list(req.include or [])
    for i, value in enumerate(include):
        if value not in INCLUDE_VALUES:
            raise _bad(f"include[{i}]: unknown value {value!r}; expected one of {sorted(INCLUDE_VALUES)}",
                       f"include[{i}]")
    if "message.output_text.logprobs" in include or req.top_logprobs:
        raise _bad("logprobs are not supported by this gateway", "include")
    _check_metadata(req.metadata)

    tools, names, hosted = _tools(req.tools or [])
    raw_tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    tool_choice, hosted_choice, tools = _tool_choice(req.tool_choice, tools, names, hosted)
    if req.parallel_tool_calls is False:
        tool_choice = tool_choice or ToolChoice()
        tool_choice.parallel = False

    items = [req.input] if isinstance(req.input, str) else req.input
    history = list(previous or []) + _messages(items, names)
    if not history:
        raise _bad("input must hold at least one item", "input")
    messages = ([Message(Role.SYSTEM, [TextPart(req.instructions)])] if req.instructions else []) + history

    summary = req.reasoning is not None and (req.reasoning.summary or req.reasoning.generate_summary) is not None
    chat = ChatRequest(
        model=req.model,
        messages=messages,
        stream=bool(req.stream),
        sampling=Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_output_tokens),
        defaults=DEFAULTS,
        tools=tools,
        tool_choice=tool_choice,
        response_format=_response_format(req.text),
        reasoning=_reasoning(req.reasoning),
        include_usage=True,
        user=req.user or req.safety_identifier,
    )
    client_tools = [t for t in raw_tools if isinstance(t, dict)]
    # For an upstream that speaks the Responses API: the tools and choices as the client wrote them.
    chat.extensions["responses"] = {
        "tools": client_tools, "tool_choice": body.get("tool_choice"), "include": include,
        "reasoning": body.get("reasoning"), "custom": sorted(names.custom),
        "namespaces": {canonical: list(pair) for canonical, pair in names.namespaced.items()}}
    return ResponsesRequest(chat=chat, body=req, names=names, history=history, hosted_tools=hosted,
                            hosted_choice=hosted_choice, client_tools=client_tools,
                            include_encrypted="reasoning.encrypted_content" in include, summary=summary,
                            raw_input=body.get("input"))


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA:
        raise _bad(f"metadata may hold at most {MAX_METADATA} pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise _bad(f"metadata key {key[:20]!r}... is longer than 64 characters", "metadata")
        if len(value) > 512:
            raise _bad(f"metadata[{key!r}] is longer than 512 characters", "metadata")


# -------------------------------------------------------------------------------------- tools


def _tools(specs: list[Any]) -> tuple[list[Tool], ToolNames, list[dict[str, Any]]]:
    tools: list[Tool] = []
    names = ToolNames()
    hosted: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(spec: wire.FunctionTool | wire.CustomTool, where: str, namespace: wire.NamespaceTool | None) -> None:
        name = canonical_name(spec.name, namespace.name if namespace else None)
        if name in seen:
            raise _bad(f"{where}: tool name {name!r} is used twice", where)
        seen.add(name)
        description = spec.description
        if namespace is not None:
            names.namespaced[name] = (namespace.name, spec.name)
            if namespace.description:
                description = f"{namespace.description}\n\n{description}" if description else namespace.description
        if isinstance(spec, wire.FunctionTool):
            tools.append(Tool(name, description, spec.parameters, spec.strict))
            return
        names.custom.add(name)
        hint = "Freeform text input."
        if spec.format is not None and spec.format.type == "grammar" and spec.format.definition:
            hint = f"The input must match this {spec.format.syntax or 'lark'} grammar:\n{spec.format.definition}"
        tools.append(Tool(name, description, {
            "type": "object", "properties": {CUSTOM_INPUT: {"type": "string", "description": hint}},
            "required": [CUSTOM_INPUT], "additionalProperties": False}))

    for i, spec in enumerate(specs):
        where = f"tools[{i}]"
        if isinstance(spec, wire.NamespaceTool):
            for j, member in enumerate(spec.tools):
                add(member, f"{where}.tools[{j}]", spec)
        elif isinstance(spec, (wire.FunctionTool, wire.CustomTool)):
            add(spec, where, None)
        else:
            hosted.append(spec.model_dump())
    return tools, names, hosted


def _tool_choice(raw: Literal["none", "auto", "required"] | dict[str, Any] | None, tools: list[Tool], names: ToolNames,
                 hosted: list[dict[str, Any]]) -> tuple[ToolChoice | None, str | None, list[Tool]]:
    """The canonical choice, the hosted tool type it forces (if any), and the tools it leaves."""
    if raw is None:
        return None, None, tools
    if isinstance(raw, str):
        if raw == "required" and not tools and not hosted:
            raise _bad("tool_choice 'required' needs tools", "tool_choice")
        return ToolChoice(mode=raw), None, tools
    kind = raw.get("type")
    declared = {t.name for t in tools}
    if kind in ("function", "custom"):
        name = raw.get("name")
        if not isinstance(name, str):
            raise _bad("tool_choice.name is required", "tool_choice.name")
        namespace = raw.get("namespace")
        canonical = canonical_name(name, namespace if isinstance(namespace, str) else None)
        if canonical not in declared or (kind == "custom") != names.is_custom(canonical):
            raise _bad(f"tool_choice names unknown {kind} tool {name!r}", "tool_choice")
        return ToolChoice(mode="tool", name=canonical), None, tools
    if kind == "allowed_tools":
        mode = raw.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise _bad("tool_choice.mode must be 'auto' or 'required'", "tool_choice.mode")
        allowed: set[str] = set()
        for entry in raw.get("tools") or []:
            if isinstance(entry, dict) and entry.get("type") in ("function", "custom") and isinstance(
                    entry.get("name"), str):
                allowed.add(canonical_name(entry["name"], entry.get("namespace")))
        kept = [t for t in tools if t.name in allowed]
        if mode == "required" and not kept:
            raise _bad("tool_choice.tools allows none of the declared function or custom tools", "tool_choice.tools")
        return ToolChoice(mode="required" if mode == "required" else "auto"), None, kept
    if isinstance(kind, str):
        return ToolChoice(mode="auto"), kind, tools  # a hosted tool: the route decides
    raise _bad("tool_choice must be 'none', 'auto', 'required' or an object with a type", "tool_choice")


def _response_format(text: wire.TextConfig | None) -> ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.schema_ is None:
        raise _bad("text.format.schema is required for json_schema", "text.format.schema")
    return ResponseFormat(type="json_schema", schema=fmt.schema_, name=fmt.name or "response", strict=fmt.strict)


def _reasoning(config: wire.ReasoningConfig | None) -> Reasoning:
    if config is None or config.effort is None:
        return Reasoning()
    return Reasoning(enabled=config.effort != "none", effort=config.effort)


# -------------------------------------------------------------------------------------- input


ROLES: dict[str, Role] = {"user": Role.USER, "assistant": Role.ASSISTANT, "system": Role.SYSTEM,
                          "developer": Role.SYSTEM}


def _messages(items: list[Any], names: ToolNames) -> list[Message]:
    out: list[Message] = []
    call_names: dict[str, str] = {}

    def assistant() -> Message:
        """The open assistant turn: reasoning, text and calls in a row are one message."""
        if out and out[-1].role is Role.ASSISTANT:
            return out[-1]
        out.append(Message(Role.ASSISTANT, []))
        return out[-1]

    for i, item in enumerate(items):
        where = f"input[{i}]" if not isinstance(item, str) else "input"
        if isinstance(item, str):
            out.append(Message(Role.USER, [TextPart(item)]))
        elif isinstance(item, wire.MessageItem):
            role = ROLES[item.role]
            parts = _content(item.content, where, images=role is Role.USER)
            if role is Role.ASSISTANT:
                assistant().parts.extend(parts)
            else:
                out.append(Message(role, parts))
        elif isinstance(item, (wire.FunctionCallItem, wire.CustomToolCallItem)):
            name = canonical_name(item.name, item.namespace)
            arguments = item.arguments if isinstance(item, wire.FunctionCallItem) else custom_arguments(item.input)
            call_names[item.call_id] = name
            assistant().parts.append(ToolCallPart(id=item.call_id, name=name, arguments=arguments))
        elif isinstance(item, (wire.FunctionCallOutputItem, wire.CustomToolCallOutputItem)):
            output = item.output
            content: list[TextPart | ImagePart] = [TextPart(output)] if isinstance(output, str) else [
                p for p in _content(output, f"{where}.output", images=True, field="output")
                if isinstance(p, (TextPart, ImagePart))]
            out.append(Message(Role.TOOL, [ToolResultPart(tool_call_id=item.call_id, content=content,
                                                          name=call_names.get(item.call_id))]))
        elif isinstance(item, wire.ReasoningItem):
            assistant().parts.append(_reasoning_part(item))
        elif isinstance(item, wire.ItemReference):
            raise _bad(f"{where}: item references are not supported; send the item itself, or use "
                       "previous_response_id", where)
        else:
            raise _bad(f"{where}: input items of type {item.type!r} belong to hosted tools, which this "
                       "gateway does not run", f"{where}.type")
    return out


def _reasoning_part(item: wire.ReasoningItem) -> ReasoningPart:
    """Reasoning replayed by the client. ``encrypted_content`` carries what the model's own API
    needs back: a signature for reasoning with text, the opaque block for reasoning without."""
    if item.content:
        text = "".join(c.text for c in item.content)
    else:
        text = "\n\n".join(s.text for s in item.summary)
    if item.encrypted_content and not text:
        return ReasoningPart(redacted=item.encrypted_content)
    return ReasoningPart(text=text, signature=item.encrypted_content)


def _content(content: str | list[Any], where: str, *, images: bool, field: str = "content") -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for j, part in enumerate(content):
        at = f"{where}.{field}[{j}]" if field == "content" else f"{where}[{j}]"
        if isinstance(part, (wire.InputText, wire.OutputText)):
            parts.append(TextPart(part.text))
        elif isinstance(part, wire.Refusal):
            parts.append(TextPart(part.refusal))
        elif isinstance(part, wire.InputImage):
            if not images:
                raise _bad(f"{at}: images are only allowed in user messages and tool outputs", at)
            parts.append(_image(part, at))
        else:
            raise _bad(f"{at}: input_file is not supported by this gateway", f"{at}.type")
    return parts


def _image(part: wire.InputImage, at: str) -> ImagePart:
    detail = part.detail if part.detail in ("low", "high") else None
    url = part.image_url
    if url is None:
        raise _bad(f"{at}: image_url is required (file ids are not supported by this gateway)", f"{at}.image_url")
    if url.startswith("data:"):
        data, media_type = parse_data_url(url, param=at)
        return ImagePart(data=data, media_type=media_type, detail=detail)
    if url.startswith(("http://", "https://")):
        return ImagePart(url=url, detail=detail)
    raise _bad(f"{at}: image_url must be an http(s) URL or a data: URL", f"{at}.image_url")

