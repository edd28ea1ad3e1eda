"""Any OpenAI-compatible upstream: OpenAI, OpenRouter, vLLM, llama.cpp server, LM Studio, Groq...

A streaming client's chat streams from the upstream; a client that wants a whole answer gets the
upstream's whole answer (one JSON body instead of dozens of frames), turned into the events its
stream would have given. Both are decoded into the typed structs of
:mod:`dragoman.protocols.openai` and go through one ``PartTracker``, which makes block events of
the upstream's flat deltas; reasoning is read from ``reasoning_content`` or ``reasoning``,
whichever the upstream sends.
"""

from __future__ import annotations

import array
import base64
import fnmatch
import functools
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dragoman.backends.base import BackendDeps, CallOptions
from dragoman.backends.http import (
    ErrorFields,
    HTTPBackend,
    ModelDiscovery,
    StreamCall,
    WholeCall,
    read_error,
    read_json,
    tracked_end,
)
from dragoman.core.choices import ChoiceTrackers
from dragoman.core.events import Event, Logprobs
from dragoman.core.ids import completion_id, now
from dragoman.core.models import Capabilities, ModelInfo
from dragoman.core.parts import PartTracker
from dragoman.core.sse import DEFAULT_MAX_FRAME, ServerSentEvent, SSEDecoder
from dragoman.core.types import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ImagePart,
    Message,
    ReasoningPart,
    Role,
    Sampling,
    TextPart,
    Tokenized,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols import openai as wire
from dragoman.protocols.openai import UPSTREAM_ERROR_CODES, UPSTREAM_FINISH_REASONS

DISCOVERY_TTL = 60.0
TOKENIZE_TIMEOUT = 30.0  # seconds for an upstream /tokenize or /detokenize


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: str | None = None  # a key, "forward", or None
    models: list[str] = Field(default_factory=lambda: ["*"])
    headers: dict[str, str] = Field(default_factory=dict)
    # Sampling fields beyond OpenAI's (top_k, min_p, repetition_penalty, typical_p, mirostat*,
    # grammar): "pass" sends them as extra body fields (vLLM, llama.cpp's server, text-generation-webui
    # take them), "drop" leaves them out. Default: pass, except to api.openai.com, which refuses them.
    extra_params: Literal["pass", "drop"] | None = None
    extra_sampling: bool | None = None  # the older spelling: true is "pass", false "drop"
    split_think_tags: bool = True
    max_connections: int = 256
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME, ge=1024)  # the longest stream line accepted
    capabilities: dict[str, bool] = Field(default_factory=dict)  # overrides for every model
    context_length: int | None = None
    # Which upstream API serves chat: Chat Completions, or the Responses API (``/v1/responses``;
    # ``type: openai-responses`` is the same as ``api: responses``).
    api: Literal["chat", "responses"] = "chat"
    # Per model (globs, first match wins) where it differs from ``api``; a ``models:`` entry may
    # also be written ``{name: GLOB, api: responses}``, which lands here.
    model_api: dict[str, Literal["chat", "responses"]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _models_with_api(cls, value: Any) -> Any:
        """``models:`` entries written as ``{name, api}``: the glob stays in ``models``, its API in
        ``model_api``."""
        if not isinstance(value, dict) or not isinstance(value.get("models"), list):
            return value
        models: list[Any] = []
        apis = dict(value.get("model_api") or {})
        for entry in value["models"]:
            if isinstance(entry, dict) and set(entry) <= {"name", "api"} and isinstance(entry.get("name"), str):
                models.append(entry["name"])
                if "api" in entry:
                    apis[entry["name"]] = entry["api"]
            else:
                models.append(entry)
        return {**value, "models": models, **({"model_api": apis} if apis else {})}

    def api_of(self, model: str, default: str) -> str:
        """The API that serves ``model``: its ``model_api`` glob's, else ``default``."""
        for pattern, api in self.model_api.items():
            if fnmatch.fnmatchcase(model, pattern):
                return api
        return default

    def passes_extra_params(self) -> bool:
        if self.extra_params is not None:
            return self.extra_params == "pass"
        if self.extra_sampling is not None:
            return self.extra_sampling
        return urlsplit(self.base_url).hostname != "api.openai.com"


class OpenAIBackend(HTTPBackend):
    type = "openai"
    Settings = OpenAISettings
    api = "chat"  # the upstream API of models that ``model_api`` does not name

    def __new__(cls, name: str, settings: OpenAISettings, deps: BackendDeps | None = None) -> OpenAIBackend:
        """``api: responses`` builds the Responses API backend, which shares these settings."""
        if cls is OpenAIBackend and settings.api == "responses":
            from dragoman.backends.openai_responses import OpenAIResponsesBackend

            return super().__new__(OpenAIResponsesBackend)
        return super().__new__(cls)

    def __init__(self, name: str, settings: OpenAISettings, deps: BackendDeps | None = None) -> None:
        super().__init__(name, settings, deps, base_url=settings.base_url.rstrip("/"), api_key=settings.api_key,
                         headers=settings.headers, max_connections=settings.max_connections,
                         max_frame_bytes=settings.max_frame_bytes)
        self.settings = settings
        self.discovery = ModelDiscovery(self._discover, ttl=DISCOVERY_TTL)

    # ------------------------------------------------------------------ models

    async def list_models(self) -> list[ModelInfo]:
        names = await self.discovery.select(self.settings.models)
        # Unknown upstream abilities are assumed present: the upstream itself refuses what it cannot do.
        caps = Capabilities(**{"vision": True, "reasoning": True, "logprobs": True, **self.settings.capabilities})
        # A model served through the Responses API runs its hosted tools (web_search...).
        hosted = Capabilities(**{"vision": True, "reasoning": True, "hosted_tools": True,
                                 **self.settings.capabilities})
        return [ModelInfo(name=n, capabilities=hosted if self.uses_responses(n) else caps,
                          context_length=self.settings.context_length) for n in names]

    def uses_responses(self, model: str) -> bool:
        return self.settings.api_of(model, self.api) == "responses"

    async def _discover(self) -> dict[str, int]:
        body = await self.request_json("GET", "/models")
        return {str(m["id"]): 0 for m in body.get("data", []) if isinstance(m, dict) and "id" in m}

    async def health(self) -> str | None:
        await self.discovery.select(self.settings.models)
        return self.discovery.last_error

    async def probe(self) -> str | None:
        return await self.discovery.probe()

    def error_fields(self, body: Any) -> ErrorFields | None:
        """OpenAI's ``{"error": {"message", "code", "param"}}``, a bare ``error`` string, or ``detail``."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error["code"]) if error.get("code") else None
            param = error.get("param")
            return ErrorFields(str(error.get("message") or ""), code, UPSTREAM_ERROR_CODES.get(code or ""),
                               str(param) if param else None)
        if isinstance(error, str):
            return ErrorFields(error)
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return ErrorFields(body["detail"])
        return None

    # -------------------------------------------------------------------- chat

    async def chat_call(self, request: ChatRequest, model: str,
                        options: CallOptions) -> StreamCall[ServerSentEvent] | WholeCall[wire.Completion]:
        if self.settings.model_api and self.uses_responses(model):
            from dragoman.backends.openai_responses import responses_call

            return responses_call(self, request, model)
        completion = request.prompt is not None
        path = "/completions" if completion else "/chat/completions"
        if completion:
            body = build_completion_body(request, model, self.settings)
        else:
            body = build_chat_body(request, model, self.settings)
        split = self.settings.split_think_tags and not completion
        tracker = PartTracker(split_think_tags=split)
        choices = _choice_trackers(request, body, split)
        if not request.stream:
            # A whole answer for a client that wants one: one JSON body instead of dozens of frames.
            body["stream"] = False
            body.pop("stream_options", None)
            return WholeCall(path, body, self._answer,
                             lambda answer: self._whole(answer, tracker, model, completion, choices))
        end = functools.partial(tracked_end, tracker, model, self.name, "finish_reason")
        return StreamCall(path, body, SSEDecoder(self.max_frame_bytes),
                          lambda sse: self._decode(sse.data, tracker, model, choices),
                          end if choices is None else lambda: choices.end() + end())

    def _whole(self, answer: wire.Completion, tracker: PartTracker, model: str, completion: bool,
               choices: ChoiceTrackers | None = None) -> list[Event]:
        """A non-streamed upstream answer as the same events its stream would have given."""
        if answer.choices is None:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent an answer without choices")
        events = tracker.start(answer.id or completion_id(), answer.model or model, int(answer.created or now()),
                               choices=choices.n if choices else 1)
        first = next((c for c in answer.choices if not c.index), None) or wire.Choice()
        if choices is not None:  # n passed through: the other choices, each ended, before choice 0's end
            for other in answer.choices:
                if other.index:
                    events += choices.wrap(other.index,
                                           self._whole_choice(other, choices.tracker(other.index), completion))
            events += choices.end()
        events += self._whole_choice(first, tracker, completion)
        if answer.usage is not None:
            tracker.usage(_usage(answer.usage))
        return events + tracker.end()

    @staticmethod
    def _whole_choice(choice: wire.Choice, tracker: PartTracker, completion: bool) -> list[Event]:
        """One choice of a whole answer as its events (its end left to the caller)."""
        events: list[Event] = []
        entries = upstream_logprobs(choice.logprobs)
        if entries:
            events.append(Logprobs(entries))
        if completion:
            events += tracker.text(choice.text or "")
        elif choice.message is not None:
            message = choice.message
            reasoning = message.reasoning_content or message.reasoning
            if reasoning is not None:
                events += tracker.reasoning(reasoning)
            if message.content is not None:
                events += tracker.text(message.content)
            for index, call in enumerate(message.tool_calls or ()):
                function = call.function or wire.FunctionCall()
                arguments = function.arguments
                if not isinstance(arguments, str):
                    arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
                events += tracker.tool_call(index, id=call.id, name=function.name, arguments=arguments)
        reason = choice.finish_reason
        tracker.finish(UPSTREAM_FINISH_REASONS.get(reason, FinishReason.STOP) if reason else None)
        return events

    def _answer(self, raw: bytes) -> wire.Completion:
        try:
            return wire.COMPLETION.decode(raw)
        except msgspec.DecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent an invalid answer: {exc}"
                               ) from exc

    def _decode(self, data: str, tracker: PartTracker, model: str,
                choices: ChoiceTrackers | None = None) -> list[Event]:
        """One ``data:`` payload. The answer is complete once a chunk carried a ``finish_reason``
        (some servers then omit ``[DONE]``) or ``[DONE]`` came."""
        if data == "[DONE]":
            if not tracker.finished:
                tracker.finish(FinishReason.STOP)
            return []
        if not data:
            return []
        try:
            chunk = wire.COMPLETION.decode(data)
        except msgspec.DecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {self.name!r} sent an invalid stream chunk: {exc}") from exc
        if chunk.error:
            error = chunk.error
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, message or f"upstream {self.name!r} failed mid-stream")
        events: list[Event] = []
        if not tracker.started:
            events += tracker.start(chunk.id or completion_id(), chunk.model or model, int(chunk.created or now()),
                                    choices=choices.n if choices else 1)
        if chunk.usage is not None:
            tracker.usage(_usage(chunk.usage))
        for choice in chunk.choices or ():
            index = choice.index
            out, into = events, tracker
            if index:  # another choice's chunk: n passed through (else a stray one, ignored)
                if choices is None:
                    continue
                out, into = [], choices.tracker(index)
            if choice.logprobs is not None:
                entries = upstream_logprobs(choice.logprobs)
                if entries:
                    out.append(Logprobs(entries))
            if choice.text is not msgspec.UNSET:  # legacy completions
                out += into.text(choice.text or "")
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    out += into.reasoning(reasoning)
                if delta.content:
                    out += into.text(delta.content)
                for call in delta.tool_calls or ():
                    function = call.function or wire.FunctionCall()
                    arguments = function.arguments
                    out += into.tool_call(call.index or 0, id=call.id, name=function.name,
                                          arguments=arguments if isinstance(arguments, str) else "")
            if choice.finish_reason:
                into.finish(UPSTREAM_FINISH_REASONS.get(choice.finish_reason, FinishReason.STOP))
            if index and choices is not None:
                events += choices.wrap(index, out)
        return events

    # -------------------------------------------------------------- tokenizing

    @property
    def _official(self) -> bool:
        """OpenAI's own API, which has no tokenize endpoint and takes no extra sampling fields."""
        return urlsplit(self.base_url).hostname == "api.openai.com"

    async def tokenize(self, request: ChatRequest, model: str, *, add_special: bool) -> Tokenized | None:
        """vLLM's ``/tokenize`` (at the server's root, beside ``/v1``); None where there is none."""
        if self._official:
            return None
        body: dict[str, Any] = {"model": model, "add_special_tokens": add_special}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        else:
            body["messages"] = [m for message in request.messages for m in _wire_messages(message)]
            body["add_generation_prompt"] = True
        payload = await self._root_call("/tokenize", body)
        if payload is None:
            return None
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent /tokenize without token ids")
        length = payload.get("max_model_len")
        return Tokenized(tokens, length if isinstance(length, int) else None)

    async def detokenize(self, tokens: list[int], model: str) -> str | None:
        if self._official:
            return None
        payload = await self._root_call("/detokenize", {"model": model, "tokens": tokens})
        if payload is None:
            return None
        text = payload.get("prompt", payload.get("content"))  # vLLM | llama.cpp server
        if not isinstance(text, str):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent /detokenize without text")
        return text

    async def _root_call(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST to ``path`` at the upstream's root (its base URL without ``/v1``); None when the
        upstream has no such endpoint (404, 405, 501)."""
        root = self.base_url.removesuffix("/v1")
        try:
            async with self.session.post(root + path, data=orjson.dumps(body), headers=self.headers(None),
                                         timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT)) as response:
                if response.status in (404, 405, 501):
                    return None
                if response.status != 200:
                    raise self.status_error(response, await read_error(response, self.error_fields))
                payload = await read_json(response, self.name)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                raise GatewayError(ErrorKind.TIMEOUT, f"upstream {self.name!r} did not answer {path} within "
                                   f"{TOKENIZE_TIMEOUT:.0f}s") from exc
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"upstream {self.name!r} is unreachable: {exc}"
                               ) from exc
        if not isinstance(payload, dict):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent {path} a non-object answer")
        return payload

    # -------------------------------------------------------------- embeddings

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": model, "input": request.inputs, "encoding_format": "base64"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        payload = await self.post_json("/embeddings", body, options)
        data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
        vectors = [_decode_vector(d.get("embedding")) for d in data]
        usage = payload.get("usage") or {}
        return EmbeddingResponse(model=model, vectors=vectors,
                                 usage=Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0)))


# ------------------------------------------------------------------------ n passed through


def _choice_trackers(request: ChatRequest, body: dict[str, Any], split_think_tags: bool) -> ChoiceTrackers | None:
    """``n`` sent upstream, which answers every choice in one call; None for one choice. Not when
    the client hides reasoning: the gateway hides it from choice 0's events only, so such a
    request takes the one-choice path (the dialect asks for each choice in turn)."""
    if request.n <= 1 or request.reasoning.exclude:
        return None
    body["n"] = request.n
    return ChoiceTrackers(request.n, split_think_tags=split_think_tags)


# ----------------------------------------------------------------------- request bodies


def build_chat_body(request: ChatRequest, model: str, settings: OpenAISettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [m for message in request.messages for m in _wire_messages(message)],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    s = request.sampling
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    for key, value in (("temperature", s.temperature), ("top_p", s.top_p), ("seed", s.seed),
                       ("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)):
        if value is not None:
            body[key] = value
    body.update(sampling_extras(s, passing=settings.passes_extra_params()))
    if s.stop:
        body["stop"] = s.stop
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {
                k: v for k, v in (("name", t.name), ("description", t.description),
                                  ("parameters", t.parameters), ("strict", t.strict)) if v is not None}}
            for t in request.tools
        ]
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.mode == "tool" else choice.mode
        )
        if not choice.parallel:
            body["parallel_tool_calls"] = False
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = request.reasoning.effective_effort()
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.user:
        body["user"] = request.user
    if request.logprobs is not None:
        body["logprobs"] = True
        if request.logprobs:
            body["top_logprobs"] = request.logprobs
    return body


def sampling_extras(s: Sampling, *, passing: bool) -> dict[str, Any]:
    """``logit_bias`` (an OpenAI field) always; the fields beyond OpenAI's when ``passing``."""
    extras: dict[str, Any] = {}
    if s.logit_bias:
        extras["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    if passing:
        for key, value in (("top_k", s.top_k), ("min_p", s.min_p), ("repetition_penalty", s.repeat_penalty),
                           ("typical_p", s.typical_p), ("mirostat", s.mirostat), ("mirostat_tau", s.mirostat_tau),
                           ("mirostat_eta", s.mirostat_eta), ("grammar", s.grammar)):
            if value is not None:
                extras[key] = value
    return extras


def build_completion_body(request: ChatRequest, model: str, settings: OpenAISettings) -> dict[str, Any]:
    s = request.sampling
    body: dict[str, Any] = {"model": model, "prompt": request.prompt or "", "stream": True,
                            "stream_options": {"include_usage": True}}
    for key, value in (("max_tokens", s.max_tokens), ("temperature", s.temperature), ("top_p", s.top_p),
                       ("seed", s.seed), ("presence_penalty", s.presence_penalty),
                       ("frequency_penalty", s.frequency_penalty), ("suffix", request.suffix)):
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop"] = s.stop
    body.update(sampling_extras(s, passing=settings.passes_extra_params()))
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    return body


def upstream_logprobs(raw: Any) -> list[dict[str, Any]]:
    """A choice's ``logprobs`` as ``Logprobs`` entries: the chat shape (``content``) as it is, the
    legacy completions shape (parallel lists) turned into it."""
    if not isinstance(raw, dict):
        return []
    content = raw.get("content")
    if isinstance(content, list):
        return [e for e in content if isinstance(e, dict)]
    tokens, values, tops = raw.get("tokens"), raw.get("token_logprobs"), raw.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return []
    tops = tops if isinstance(tops, list) else []
    entries = []
    for index, (token, value) in enumerate(zip(tokens, values, strict=False)):
        top = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
        entries.append({"token": str(token), "logprob": value, "bytes": list(str(token).encode()),
                        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(str(t).encode())}
                                         for t, v in top.items()]})
    return entries


def _image_url(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        url = f"data:{part.media_type or 'image/png'};base64,{base64.b64encode(part.data).decode()}"
    else:
        url = part.url or ""
    image: dict[str, Any] = {"url": url}
    if part.detail:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _content(parts: list[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_url(p) for p in parts]


def _wire_messages(message: Message) -> list[dict[str, Any]]:
    """One canonical message may become several OpenAI messages (tool results are their own)."""
    out: list[dict[str, Any]] = []
    if message.role is Role.ASSISTANT:
        wire: dict[str, Any] = {"role": "assistant"}
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        wire["content"] = text if text or not calls else None
        if calls:
            wire["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments or "{}"}} for c in calls]
        out.append(wire)
        return out
    plain: list[TextPart | ImagePart] = []
    for part in message.parts:
        if isinstance(part, ToolResultPart):
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": _content(part.content)
                        if any(isinstance(p, ImagePart) for p in part.content) else part.text})
        elif isinstance(part, (TextPart, ImagePart)):
            plain.append(part)
        elif isinstance(part, ReasoningPart):
            continue  # upstream chat APIs do not take reasoning back
    if plain or not out:
        role = "user" if message.role is Role.TOOL else message.role.value
        wire = {"role": role, "content": _content(plain)}
        if message.name:
            wire["name"] = message.name
        out.append(wire)
    return out


def _usage(raw: wire.Usage) -> Usage:
    details, prompt_details = raw.completion_tokens_details, raw.prompt_tokens_details
    return Usage(
        prompt_tokens=raw.prompt_tokens or 0,
        completion_tokens=raw.completion_tokens or 0,
        reasoning_tokens=(details.reasoning_tokens or 0) if details is not None else 0,
        cached_tokens=(prompt_details.cached_tokens or 0) if prompt_details is not None else 0,
    )


def _decode_vector(raw: Any) -> list[float]:
    if isinstance(raw, str):
        values = array.array("f")
        values.frombytes(base64.b64decode(raw))
        return values.tolist()
    if isinstance(raw, list):
        return [float(v) for v in raw]
    raise GatewayError(ErrorKind.UPSTREAM_ERROR, "upstream sent an embedding in an unknown encoding")
