"""OpenAI wire <-> canonical: requests in, responses and errors out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from dragoman.core.images import parse_data_url
from dragoman.core.limits import check_embedding_inputs, check_stop_sequences
from dragoman.core.types import (
    ChatRequest,
    ChatResponse,
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
    ToolChoice,
    ToolResultPart,
    Usage,
)
from dragoman.dialects.openai import wire
from dragoman.dialects.validation import validated
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols.openai import FINISH_REASONS

# OpenAI's documented defaults, applied when neither the request nor an override sets them.
CHAT_DEFAULTS = Sampling(temperature=1.0, top_p=1.0, presence_penalty=0.0, frequency_penalty=0.0)
COMPLETION_DEFAULTS = Sampling(temperature=1.0, top_p=1.0, max_tokens=16)



# ---------------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Choices:
    """The generations one OpenAI request asks for, in choice-index order: ``n`` per prompt (a
    completion may send several prompts). Each prompt's first request carries ``n``: a backend
    that answers all ``n`` at once does (an OpenAI-compatible upstream); otherwise the prompt's
    other requests run one after another."""

    requests: list[ChatRequest]
    n: int = 1

    @property
    def first(self) -> ChatRequest:
        return self.requests[0]


def _choices(requests: list[ChatRequest], n: int) -> Choices:
    """``n`` generations of each request; with a ``seed``, choice ``j`` uses ``seed + j`` so the
    choices differ yet stay reproducible."""
    if len(requests) * n > wire.MAX_CHOICES:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"{len(requests)} prompts times n={n} is more than the {wire.MAX_CHOICES} generations "
                           "one request may ask for", param="n")
    out = []
    for request in requests:
        for j in range(n):
            seed = request.sampling.seed
            if j == 0:
                out.append(request if n == 1 else replace(request, n=n))
            else:
                out.append(request if seed is None else
                           replace(request, sampling=replace(request.sampling, seed=seed + j)))
    return Choices(out, n)


def parse_chat(body: Any) -> Choices:
    req = validated(wire.ChatCompletionRequest, body)
    if req.top_logprobs is not None and not req.logprobs:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "top_logprobs needs logprobs: true", param="top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "stream_options is only allowed when stream is true",
                           param="stream_options")

    messages = _messages(req.messages)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "stop may hold at most 4 sequences", param="stop")
    check_stop_sequences(stop, "stop")
    sampling = _extra_sampling(req, Sampling(
        temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_completion_tokens or req.max_tokens,
        stop=stop, seed=req.seed, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
    ), req.logit_bias)
    if sampling.grammar is not None and req.response_format is not None and req.response_format.type != "text":
        raise GatewayError(ErrorKind.INVALID_REQUEST, "give either grammar or response_format, not both",
                           param="grammar")
    tools = [Tool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
             for t in req.tools or []]
    tool_choice: ToolChoice | None = None
    if isinstance(req.tool_choice, str):
        tool_choice = ToolChoice(mode=req.tool_choice)
    elif req.tool_choice is not None:
        name = req.tool_choice.function.name
        if not any(t.name == name for t in tools):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"tool_choice names unknown tool {name!r}",
                               param="tool_choice")
        tool_choice = ToolChoice(mode="tool", name=name)
    if req.parallel_tool_calls is False:
        tool_choice = tool_choice or ToolChoice()
        tool_choice.parallel = False
    if tool_choice is not None and tool_choice.mode in ("required", "tool") and not tools:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "tool_choice requires tools", param="tool_choice")

    chat = ChatRequest(
        model=req.model,
        messages=messages,
        stream=bool(req.stream),
        sampling=sampling,
        defaults=CHAT_DEFAULTS,
        tools=tools,
        tool_choice=tool_choice,
        response_format=_response_format(req.response_format),
        reasoning=_reasoning(req),
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
        user=req.user,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
    )
    return _choices([chat], req.n or 1)


def _extra_sampling(req: wire.ExtraSampling, sampling: Sampling, logit_bias: dict[str, float] | None) -> Sampling:
    """``sampling`` with the fields beyond OpenAI's and ``logit_bias`` (token ids as strings on the wire)."""
    sampling.top_k, sampling.min_p, sampling.repeat_penalty = req.top_k, req.min_p, req.repetition_penalty
    sampling.typical_p, sampling.grammar = req.typical_p, req.grammar
    sampling.mirostat = req.mirostat if req.mirostat is not None else req.mirostat_mode
    sampling.mirostat_tau, sampling.mirostat_eta = req.mirostat_tau, req.mirostat_eta
    if logit_bias is not None:
        bias: dict[int, float] = {}
        for key, value in logit_bias.items():
            if not key.lstrip("-").isdigit() or int(key) < 0 or not -100 <= value <= 100:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"logit_bias maps token ids to values from -100 to 100; {key!r}: {value} "
                                   "is not that",
                                   param="logit_bias")
            bias[int(key)] = value
        sampling.logit_bias = bias
    return sampling


def _reasoning(req: wire.ChatCompletionRequest) -> Reasoning:
    reasoning = Reasoning()
    if req.think is not None:  # Ollama's ``think``: true/false, or an effort
        reasoning.enabled = req.think is not False
        reasoning.effort = req.think if isinstance(req.think, str) else None
    if req.reasoning_effort is not None:
        reasoning.effort = req.reasoning_effort
        reasoning.enabled = req.reasoning_effort != "none"
    if req.reasoning is not None:
        if req.reasoning.effort is not None:
            reasoning.effort = req.reasoning.effort
            reasoning.enabled = req.reasoning.effort != "none"
        if req.reasoning.enabled is not None:
            reasoning.enabled = req.reasoning.enabled
        if req.reasoning.max_tokens is not None:
            reasoning.budget_tokens = req.reasoning.max_tokens
            reasoning.enabled = True if reasoning.enabled is None else reasoning.enabled
        reasoning.exclude = bool(req.reasoning.exclude)
    return reasoning


def _response_format(fmt: wire.ResponseFormat | None) -> ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "response_format.json_schema.schema is required",
                           param="response_format.json_schema")
    return ResponseFormat(type="json_schema", schema=fmt.json_schema.schema_, name=fmt.json_schema.name,
                          strict=fmt.json_schema.strict)


def _messages(wire_messages: list[wire.ChatMessage]) -> list[Message]:
    out: list[Message] = []
    tool_names: dict[str, str] = {}
    for i, msg in enumerate(wire_messages):
        param = f"messages[{i}]"
        if msg.role in ("system", "developer"):
            out.append(Message(Role.SYSTEM, _parts(msg.content, param, allow_images=False), name=msg.name))
        elif msg.role == "user":
            if msg.content is None:
                problem = "must be a string or an array of content parts, not null" \
                    if "content" in msg.model_fields_set else "field required"
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"{param}.content: {problem}",
                                   param=f"{param}.content")
            out.append(Message(Role.USER, _parts(msg.content, param, allow_images=True), name=msg.name))
        elif msg.role == "assistant":
            parts: list[Part] = _reasoning_parts(msg)
            parts += _parts(msg.content, param, allow_images=False)
            for j, call in enumerate(msg.tool_calls or []):
                arguments = call.function.arguments
                text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
                call_id = call.id or f"call_{i}_{j}"
                tool_names[call_id] = call.function.name
                parts.append(ToolCallPart(id=call_id, name=call.function.name, arguments=text))
            out.append(Message(Role.ASSISTANT, parts, name=msg.name))
        else:  # tool, function (deprecated)
            call_id = msg.tool_call_id or (msg.name if msg.role == "function" else None) or ""
            if not call_id:
                raise _no_call_id(msg, param)
            content = [p for p in _parts(msg.content, param, allow_images=True)
                       if isinstance(p, (TextPart, ImagePart))]
            name = tool_names.get(call_id) or msg.name
            out.append(Message(Role.TOOL, [ToolResultPart(tool_call_id=call_id, content=content, name=name)]))
    return out


def _no_call_id(msg: wire.ChatMessage, param: str) -> GatewayError:
    """A tool result that names no call: the field left out, sent null, or sent empty."""
    field, meaning = (("name", "the name of the function whose result this is") if msg.role == "function"
                      else ("tool_call_id", "the id of the tool call this message answers"))
    where = f"{param}.{field}"
    if field not in msg.model_fields_set:
        text = f"{where}: field required ({meaning})"
    else:
        text = f"{where} is {'null' if getattr(msg, field) is None else 'empty'}: it must be {meaning}"
    return GatewayError(ErrorKind.INVALID_REQUEST, text, param=where)


def _reasoning_parts(msg: wire.ChatMessage) -> list[Part]:
    if msg.reasoning_details:
        parts: list[Part] = []
        for detail in msg.reasoning_details:
            if detail.type == "reasoning.encrypted" and detail.data:
                parts.append(ReasoningPart(redacted=detail.data))
            elif detail.text is not None or detail.signature is not None:
                parts.append(ReasoningPart(text=detail.text or "", signature=detail.signature))
        return parts
    text = msg.reasoning_content or msg.reasoning
    return [ReasoningPart(text=text)] if text else []


def _parts(content: str | list[Any] | None, param: str, *, allow_images: bool) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for j, item in enumerate(content):
        where = f"{param}.content[{j}]"
        if isinstance(item, wire.TextContent):
            parts.append(TextPart(item.text))
        elif isinstance(item, wire.ImageContent):
            if not allow_images:
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where}: images are only allowed in user messages",
                                   param=where)
            image = item.image_url
            url = image if isinstance(image, str) else image.url
            detail = None if isinstance(image, str) else image.detail
            if url.startswith("data:"):
                data, media_type = parse_data_url(url, param=where)
                parts.append(ImagePart(data=data, media_type=media_type, detail=detail))
            elif url.startswith(("http://", "https://")):
                parts.append(ImagePart(url=url, detail=detail))
            else:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"{where}: image_url must be an http(s) URL or a data: URL", param=where)
        else:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where}: content type {item.type!r} is not supported",
                               param=where)
    return parts


def parse_completion(body: Any) -> Choices:
    req = validated(wire.CompletionRequest, body)
    prompts = req.prompt if isinstance(req.prompt, list) else [req.prompt]
    if not prompts:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "prompt must not be an empty list", param="prompt")
    if req.best_of not in (None, 1, req.n or 1):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "best_of other than n is not supported", param="best_of")
    if req.echo:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "echo is not supported", param="echo")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    check_stop_sequences(stop, "stop")
    requests = [ChatRequest(
        model=req.model, messages=[], prompt=prompt, suffix=req.suffix, stream=bool(req.stream),
        sampling=_extra_sampling(req, Sampling(
            temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens, stop=stop, seed=req.seed,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty), req.logit_bias),
        defaults=COMPLETION_DEFAULTS,
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
        user=req.user,
        logprobs=req.logprobs,
    ) for prompt in prompts]
    return _choices(requests, req.n or 1)


def parse_tokenize(body: Any) -> tuple[ChatRequest, bool]:
    """The text to tokenize as a request (``prompt`` raw, or ``messages`` through the chat
    template) and whether to add special tokens (default: yes for a prompt, as vLLM; a chat
    template writes its own)."""
    req = validated(wire.TokenizeRequest, body)
    prompt = req.prompt if req.prompt is not None else req.content
    if (prompt is None) == (req.messages is None):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "give exactly one of 'prompt' or 'messages'", param="prompt")
    add_special = req.add_special if req.add_special is not None else req.add_special_tokens
    if prompt is not None:
        return ChatRequest(model=req.model, messages=[], prompt=prompt), add_special is not False
    return ChatRequest(model=req.model, messages=_messages(req.messages or [])), bool(add_special)


def parse_detokenize(body: Any) -> tuple[str, list[int]]:
    req = validated(wire.DetokenizeRequest, body)
    return req.model, req.tokens


def parse_embeddings(body: Any) -> tuple[EmbeddingRequest, str]:
    req = validated(wire.EmbeddingRequest, body)
    if req.encoding_format not in ("float", "base64"):
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"Invalid value for 'encoding_format' = {req.encoding_format}. "
                           "Supported values: ['float', 'base64'].", param="encoding_format")
    inputs: list[str]
    if isinstance(req.input, str):
        inputs = [req.input]
    elif all(isinstance(i, str) for i in req.input):
        inputs = [str(i) for i in req.input]
    else:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "token-array input is not supported; send text",
                           param="input")
    if not inputs:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "input must not be empty", param="input")
    check_embedding_inputs(len(inputs))
    return EmbeddingRequest(model=req.model, inputs=inputs, dimensions=req.dimensions), req.encoding_format


# --------------------------------------------------------------------------------- responses


def usage_body(response_usage: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": response_usage.prompt_tokens,
        "completion_tokens": response_usage.completion_tokens,
        "total_tokens": response_usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": response_usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": response_usage.reasoning_tokens},
    }


def reasoning_detail(part: ReasoningPart, index: int) -> dict[str, Any]:
    if part.redacted is not None:
        return {"type": "reasoning.encrypted", "data": part.redacted, "index": index}
    return {"type": "reasoning.text", "text": part.text, "signature": part.signature, "index": index}


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, ``top_logprobs`` as token -> logprob maps,
    ``text_offset`` each token's position in prompt + completion."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def choice_usage(responses: list[ChatResponse], n: int) -> dict[str, Any]:
    """Usage of all choices: each prompt read once (as OpenAI counts ``n``), every answer."""
    total = Usage(
        prompt_tokens=sum(r.usage.prompt_tokens for i, r in enumerate(responses) if i % n == 0),
        completion_tokens=sum(r.usage.completion_tokens for r in responses),
        reasoning_tokens=sum(r.usage.reasoning_tokens for r in responses),
        cached_tokens=sum(r.usage.cached_tokens for i, r in enumerate(responses) if i % n == 0),
    )
    return usage_body(total)


def render_chat(response: ChatResponse, model: str) -> dict[str, Any]:
    calls = response.tool_calls
    text = response.text
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                               "refusal": None}
    reasoning = [p for p in response.parts if isinstance(p, ReasoningPart)]
    if reasoning:
        message["reasoning_content"] = response.reasoning_text
        if any(p.signature or p.redacted is not None for p in reasoning):
            message["reasoning_details"] = [reasoning_detail(p, i) for i, p in enumerate(reasoning)]
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "logprobs": None if response.logprobs is None else chat_logprobs(response.logprobs),
                     "finish_reason": FINISH_REASONS[response.finish_reason]}],
        "usage": usage_body(response.usage),
    }


def render_completion(response: ChatResponse, model: str, prompt: str = "") -> dict[str, Any]:
    logprobs = None if response.logprobs is None else completion_logprobs(response.logprobs, len(prompt))
    return {
        "id": "cmpl-" + response.id.removeprefix("chatcmpl-"),
        "object": "text_completion",
        "created": response.created,
        "model": model,
        "choices": [{"text": response.text, "index": 0, "logprobs": logprobs,
                     "finish_reason": FINISH_REASONS[response.finish_reason]}],
        "usage": usage_body(response.usage),
    }


def render_choices(responses: list[ChatResponse], choices: Choices, model: str, *, completion: bool
                   ) -> dict[str, Any]:
    """One body for several generations: the first's id, every choice with its index."""
    bodies = [render_completion(r, model, c.prompt or "") if completion else render_chat(r, model)
              for r, c in zip(responses, choices.requests, strict=True)]
    body = bodies[0]
    body["choices"] = [{**b["choices"][0], "index": i} for i, b in enumerate(bodies)]
    body["usage"] = choice_usage(responses, choices.n)
    return body
