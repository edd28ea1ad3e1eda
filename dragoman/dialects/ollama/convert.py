"""Ollama wire <-> canonical: requests in; model listings, answers and errors out.

Decisions worth knowing:

* ``stream`` defaults to true; Ollama's documented sampling defaults go in ``ChatRequest.defaults``.
* Options: unknown (and retired, e.g. ``mirostat``, ``tfs_z``) keys are ignored as Ollama ignores
  them; a known key with the wrong JSON type is a 400 naming it. ``stop`` may be a string
  (OllamaKit). Option keys OllamaKit puts at the top level of the body count when ``options``
  lacks them. Options that are not sampling fields (``num_ctx`` ...) and ``keep_alive`` ride in
  ``ChatRequest.options``.
* History tool calls often carry no ids: each gets ``call_<message>_<position>`` (stable across
  turns, since clients resend the history), and each ``role: tool`` message is paired with the
  preceding assistant's calls by ``tool_call_id``, else by ``tool_name``, else by order.
* Tool-call arguments go out as JSON objects. Text from a model that is not a JSON object
  becomes its longest valid object prefix, closed (``core.jsonprefix.to_object``, the rule the
  Anthropic dialect follows too), rather than failing the answer.
* Generate: ``raw`` or ``suffix`` make a raw completion (``ChatRequest.prompt``); otherwise it is a
  chat of ``system`` + the user's ``prompt``. ``template`` is ignored. ``context`` (the token ids a
  previous answer returned) rides in ``ChatRequest.options["context"]``: the local runtime reads
  those tokens before this prompt, as Ollama does; backends without a tokenizer ignore them.
  The final object carries ``context`` (not in raw mode, as in Ollama): the backend's token ids
  of prompt and answer, or ``[]`` from a backend that has none to give.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

from dragoman.core.duration import parse_duration
from dragoman.core.images import decode_base64, parse_data_url, sniff_media_type
from dragoman.core.jsonprefix import to_object
from dragoman.core.limits import check_embedding_inputs, check_stop_sequences
from dragoman.core.models import ModelEntry, ModelInfo
from dragoman.core.types import (
    ChatRequest,
    EmbeddingRequest,
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
    ToolResultPart,
    effort_level,
)
from dragoman.dialects.ollama import wire
from dragoman.dialects.validation import validated
from dragoman.errors import GatewayError, invalid_request

# Ollama's documented defaults (api/types.go DefaultOptions; docs/modelfile.mdx).
DEFAULTS = Sampling(temperature=0.8, top_p=0.9, top_k=40, min_p=0.0, repeat_penalty=1.0,
                    presence_penalty=0.0, frequency_penalty=0.0)

@dataclass(slots=True)
class Parsed:
    """A chat or generate call; ``load`` when it only asks for the model to be (un)loaded."""

    request: ChatRequest
    load: bool = False
    unload: bool = False
    raw: bool = False  # a raw-mode generate, whose answer carries no ``context``


# ---------------------------------------------------------------------------------- requests


def _require_model(name: str | None) -> str:
    if not name:
        raise invalid_request("model is required", "model")
    return name


def parse_options(body: dict[str, Any], options: dict[str, Any] | None) -> tuple[Sampling, dict[str, Any]]:
    """``options`` (plus misplaced top-level option keys) -> (sampling, backend options)."""
    merged = dict(options or {})
    for key, value in body.items():
        if key in wire.OPTION_TYPES and key not in wire.REQUEST_FIELDS:
            merged.setdefault(key, value)
    sampling = Sampling()
    extra: dict[str, Any] = {}
    for key, raw in merged.items():
        kind = wire.OPTION_TYPES.get(key)
        if kind is None or raw is None:
            continue  # unknown or retired options are ignored, as Ollama does
        value = _option_value(key, kind, raw)
        field = wire.SAMPLING_OPTIONS.get(key)
        if field is None:
            extra[key] = value
        elif field == "max_tokens":
            sampling.max_tokens = value if value >= 0 else None  # -1 (and -2, fill context): unlimited
        elif field == "seed":
            sampling.seed = value if value >= 0 else None  # -1: random
        else:
            setattr(sampling, field, value)
    check_stop_sequences(sampling.stop, "options.stop")
    return sampling, extra


def _option_value(key: str, kind: wire.OptionType, value: Any) -> Any:
    if kind == "array":
        if isinstance(value, str):
            return [value]  # OllamaKit sends one stop string
        if isinstance(value, list):
            if all(isinstance(item, str) for item in value):
                return list(value)
            raise invalid_request(f'option "{key}" must be an array of strings', f"options.{key}")
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if kind == "integer" else float(value)  # floats truncate, as in Ollama
    raise invalid_request(f'option "{key}" must be of type {kind}', f"options.{key}")


def parse_think(value: bool | str | None) -> Reasoning:
    if value is None:
        return Reasoning()
    if isinstance(value, bool):
        return Reasoning(enabled=value)
    if value in wire.THINK_LEVELS:
        return Reasoning(enabled=True, effort=effort_level(value))
    raise invalid_request(f'invalid think value: "{value}" (must be "low", "medium", "high", "max", true, or false)',
                          "think")


def parse_format(value: str | dict[str, Any] | None) -> ResponseFormat | None:
    if value is None or value == "":
        return None
    if value == "json":
        return ResponseFormat(type="json_object")
    if isinstance(value, dict):
        return ResponseFormat(type="json_schema", schema=value, name="response")
    raise invalid_request('invalid format: expected "json" or a JSON schema object', "format")


def is_zero_duration(value: float | str | None) -> bool:
    """``keep_alive`` 0 (``0``, ``"0"``, ``"0s"``, ``"0m"``): unload after the request."""
    if isinstance(value, (int, float)):
        return value == 0
    return isinstance(value, str) and value.strip().rstrip("hms").strip() in ("0", "0.0")


def keep_alive_seconds(value: float | str | None) -> float | None:
    """``keep_alive`` in seconds (``inf`` for a negative one: stay loaded); None when not sent."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid_request(str(exc), "keep_alive") from exc


def _backend_options(extra: dict[str, Any], keep_alive: float | str | None) -> dict[str, Any]:
    if keep_alive is not None:
        extra["keep_alive"] = keep_alive
    return extra


def _images(images: list[str] | None, param: str) -> list[ImagePart]:
    parts: list[ImagePart] = []
    for k, data in enumerate(images or []):
        where = f"{param}.images[{k}]"
        if not data:
            continue
        if data.startswith("data:"):
            raw, media_type = parse_data_url(data, param=where)
        else:
            raw = decode_base64(data, param=where)
            media_type = sniff_media_type(raw)
        parts.append(ImagePart(data=raw, media_type=media_type))
    return parts


def _arguments_text(arguments: dict[str, Any] | str | None) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments or "{}"
    return orjson.dumps(arguments).decode()


def _pair_tool_result(pending: list[tuple[str, str]], msg: wire.ChatMessage, index: int) -> tuple[str, str | None]:
    """The (tool_call_id, tool name) a ``role: tool`` message answers."""
    if msg.tool_call_id:
        for k, (call_id, name) in enumerate(pending):
            if call_id == msg.tool_call_id:
                del pending[k]
                return call_id, msg.tool_name or name
        return msg.tool_call_id, msg.tool_name
    if msg.tool_name:
        for k, (call_id, name) in enumerate(pending):
            if name == msg.tool_name:
                del pending[k]
                return call_id, name
    if pending:
        call_id, name = pending.pop(0)
        return call_id, msg.tool_name or name
    return f"call_{index}", msg.tool_name  # a result with no call before it


def _messages(wire_messages: list[wire.ChatMessage]) -> list[Message]:
    out: list[Message] = []
    pending: list[tuple[str, str]] = []  # the latest assistant's tool calls not yet answered
    for i, msg in enumerate(wire_messages):
        param = f"messages[{i}]"
        role = msg.role.lower()
        text = msg.content or ""
        images = _images(msg.images, param)
        if images and role not in ("user", "tool"):
            raise invalid_request(f"{param}.images: images are only allowed in user and tool messages",
                                  f"{param}.images")
        if role in ("system", "developer"):
            out.append(Message(Role.SYSTEM, [TextPart(text)]))
        elif role == "user":
            parts: list[Part] = [TextPart(text)] if text or not images else []
            out.append(Message(Role.USER, parts + list(images)))
        elif role == "assistant":
            parts = [ReasoningPart(text=msg.thinking)] if msg.thinking else []
            if text:
                parts.append(TextPart(text))
            pending = []
            for j, call in enumerate(msg.tool_calls or []):
                call_id = call.id or f"call_{i}_{j}"
                parts.append(ToolCallPart(call_id, call.function.name, _arguments_text(call.function.arguments)))
                pending.append((call_id, call.function.name))
            out.append(Message(Role.ASSISTANT, parts))
        elif role == "tool":
            call_id, name = _pair_tool_result(pending, msg, i)
            content: list[TextPart | ImagePart] = [TextPart(text), *images]
            out.append(Message(Role.TOOL, [ToolResultPart(call_id, content, name=name)]))
        else:
            raise invalid_request(f"{param}.role: unknown role {msg.role!r}; expected system, user, assistant or tool",
                          f"{param}.role")
    return out


def parse_chat(body: Any) -> Parsed:
    req = validated(wire.ChatRequest, body)
    model = _require_model(req.model)
    sampling, extra = parse_options(body, req.options)
    request = ChatRequest(
        model=model,
        messages=_messages(req.messages or []),
        stream=req.stream is not False,
        sampling=sampling,
        defaults=DEFAULTS,
        tools=[Tool(t.function.name, t.function.description, t.function.parameters) for t in req.tools or []],
        response_format=parse_format(req.format),
        reasoning=parse_think(req.think),
        include_usage=True,
        options=_backend_options(extra, req.keep_alive),
    )
    load = not request.messages
    return Parsed(request, load=load, unload=load and is_zero_duration(req.keep_alive))


def parse_generate(body: Any) -> Parsed:
    req = validated(wire.GenerateRequest, body)
    model = _require_model(req.model)
    if req.raw and (req.system or req.template or req.context):
        raise invalid_request("raw mode does not support template, system, or context", "raw")
    sampling, extra = parse_options(body, req.options)
    prompt = req.prompt or ""
    images = _images(req.images, "")
    request = ChatRequest(
        model=model, messages=[], stream=req.stream is not False, sampling=sampling, defaults=DEFAULTS,
        response_format=parse_format(req.format), reasoning=parse_think(req.think), include_usage=True,
        options=_backend_options(extra, req.keep_alive),
    )
    if req.context:
        request.options["context"] = req.context
    if req.raw or req.suffix:
        if images:
            raise invalid_request("images are not supported in raw mode or with a suffix", "images")
        request.prompt = prompt
        request.suffix = req.suffix or None
    else:
        if req.system:
            request.messages.append(Message(Role.SYSTEM, [TextPart(req.system)]))
        user: list[Part] = [TextPart(prompt)] if prompt or not images else []
        request.messages.append(Message(Role.USER, user + list(images)))
    load = not prompt and not images
    return Parsed(request, load=load, unload=load and is_zero_duration(req.keep_alive), raw=bool(req.raw))


def parse_embed(body: Any) -> EmbeddingRequest:
    """``/api/embed``; ``inputs`` may be empty (answered with no vectors, as Ollama does)."""
    req = validated(wire.EmbedRequest, body)
    model = _require_model(req.model)
    inputs: list[str]
    if req.input is None:
        inputs = []
    elif isinstance(req.input, str):
        inputs = [req.input] if req.input else []
    elif all(isinstance(item, str) for item in req.input):
        inputs = [str(item) for item in req.input]
    else:
        raise invalid_request("invalid input type", "input")
    check_embedding_inputs(len(inputs))
    _, extra = parse_options(body, req.options)
    options = _backend_options(extra, req.keep_alive)
    if req.truncate is not None:
        options["truncate"] = req.truncate
    return EmbeddingRequest(model=model, inputs=inputs, dimensions=req.dimensions, options=options)


def parse_embeddings(body: Any) -> EmbeddingRequest:
    """The legacy ``/api/embeddings``: one ``prompt``."""
    req = validated(wire.EmbeddingsRequest, body)
    model = _require_model(req.model)
    _, extra = parse_options(body, req.options)
    return EmbeddingRequest(model=model, inputs=[req.prompt] if req.prompt else [],
                            options=_backend_options(extra, req.keep_alive))


def parse_show(body: Any) -> tuple[str, bool]:
    req = validated(wire.ShowRequest, body)
    return _require_model(req.model or req.name), bool(req.verbose)


# --------------------------------------------------------------------------------- responses


def timestamp(ns: int | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, as Ollama writes ``created_at``."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def seconds_timestamp(seconds: float) -> str:
    return timestamp(int(seconds * 1_000_000_000))


def digest(entry: ModelEntry) -> str:
    """The backend's digest, or a stable one made from the client-facing id."""
    known = entry.info.details.digest
    if known:
        return known.removeprefix("sha256:")
    return hashlib.sha256(entry.id.encode()).hexdigest()


def details_body(info: ModelInfo) -> dict[str, Any]:
    d = info.details
    family = d.family or (d.families[0] if d.families else "")
    return {
        "parent_model": d.parent_model,
        "format": d.format,
        "family": family,
        "families": list(d.families) or ([family] if family else []),
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


def modified_at(info: ModelInfo, fallback: float) -> str:
    return seconds_timestamp(info.details.modified_at or info.created or fallback)


def tag_body(entry: ModelEntry, fallback_time: float) -> dict[str, Any]:
    return {
        "name": entry.id,
        "model": entry.id,
        "modified_at": modified_at(entry.info, fallback_time),
        "size": int(entry.info.details.size),
        "digest": digest(entry),
        "details": details_body(entry.info),
    }


def ps_body(entry: ModelEntry, now: float) -> dict[str, Any]:
    """A loaded model; with no known expiry, Ollama's default keep-alive (5 minutes) from now."""
    return {
        "name": entry.id,
        "model": entry.id,
        "size": int(entry.info.details.size),
        "digest": digest(entry),
        "details": details_body(entry.info),
        "expires_at": seconds_timestamp(entry.expires_at or now + 300),
        "size_vram": 0,
        "context_length": entry.info.context_length or 0,
    }


def model_info(info: ModelInfo, *, verbose: bool) -> dict[str, Any]:
    """``model_info``: the backend's facts plus architecture and the context and embedding lengths."""
    out: dict[str, Any] = {}
    for key, value in info.extra.items():
        if key == "error":
            continue
        if not verbose and isinstance(value, list) and key.startswith("tokenizer."):
            value = None  # as Ollama: token tables only with ``verbose``
        out[key] = value
    architecture = str(out.get("general.architecture") or info.details.family or "unknown")
    out["general.architecture"] = architecture
    if info.context_length:
        out.setdefault(f"{architecture}.context_length", info.context_length)
    if info.embedding_length:
        out.setdefault(f"{architecture}.embedding_length", info.embedding_length)
    return out


def show_body(entry: ModelEntry, *, verbose: bool, fallback_time: float) -> dict[str, Any]:
    info = entry.info
    d = info.details
    modelfile = f"# Modelfile generated by dragoman\nFROM {entry.id}\n"
    if d.template:
        modelfile += f'TEMPLATE """{d.template}"""\n'
    for line in d.parameters.splitlines():
        if line.strip():
            modelfile += f"PARAMETER {line.strip()}\n"
    if d.license:
        modelfile += f'LICENSE """{d.license}"""\n'
    return {
        "license": d.license,
        "modelfile": modelfile,
        "parameters": d.parameters,
        "template": d.template,
        "details": details_body(info),
        "model_info": model_info(info, verbose=verbose),
        "capabilities": info.capabilities.names(),
        "modified_at": modified_at(info, fallback_time),
    }


def tool_call_body(part: ToolCallPart, index: int) -> dict[str, Any]:
    return {"id": part.id, "function": {"index": index, "name": part.name,
                                        "arguments": to_object(part.arguments)}}


def error_body(error: GatewayError) -> dict[str, Any]:
    return {"error": error.message}
