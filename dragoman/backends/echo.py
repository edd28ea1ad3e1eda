"""A deterministic backend with no network, for tests, benchmarks and trying the API shape.

The reply is the text of the last user message, verbatim, streamed one word per chunk
(spaces kept). Usage counts whitespace-separated words. A few conventions make it useful for
exercising every dialect feature:

* when the request offers tools and the last user message reads ``!tool NAME {json}``, the
  reply is a call of tool NAME with those arguments;
* when the last message is a tool result, the reply is that result's text;
* when reasoning is requested, a reasoning part (``Thinking: <reply>``) with a deterministic
  signature comes first;
* ``stop`` sequences and ``max_tokens`` (in words) are honoured.

Work that grows with the request stays off the event loop's back: a long reply lets other
requests run every ``WORDS_PER_TURN`` words, and embedding vectors are built in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
from collections.abc import AsyncIterator

import orjson
from pydantic import BaseModel, ConfigDict

from dragoman.backends.base import Backend, BackendDeps, CallOptions
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart
from dragoman.core.ids import completion_id, now, tool_call_id
from dragoman.core.limits import MAX_EMBEDDING_DIMENSIONS
from dragoman.core.models import Capabilities, ModelDetails, ModelInfo
from dragoman.core.types import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    Message,
    Role,
    TextPart,
    ToolResultPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError

_WORDS = re.compile(r"\s*\S+\s*|\s+")
_TOOL_COMMAND = re.compile(r"^!tool\s+([A-Za-z0-9_.-]+)\s*(.*)$", re.DOTALL)
EMBEDDING_SIZE = 32
WORDS_PER_TURN = 256  # deltas streamed before other tasks get a turn of the event loop


class EchoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = ["echo"]


def count_words(text: str) -> int:
    return len(text.split())


class EchoBackend(Backend):
    type = "echo"
    Settings = EchoSettings

    def __init__(self, name: str, settings: EchoSettings, deps: BackendDeps) -> None:
        super().__init__(name, settings, deps)
        self._models = settings.models

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=model,
                capabilities=Capabilities(vision=True, tools=True, reasoning=True, embeddings=True),
                context_length=1_000_000,
                embedding_length=EMBEDDING_SIZE,
                details=ModelDetails(family="echo", families=["echo"], parameter_size="0",
                                     quantization_level="none", format="echo"),
            )
            for model in self._models
        ]

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        source = request.prompt if request.prompt is not None else _last_input_text(request.messages)
        prompt_tokens = count_words(request.prompt or "") + sum(
            count_words(_message_text(m)) for m in request.messages
        )
        yield MessageStart(id=completion_id(), model=model, created=now(), prompt_tokens=prompt_tokens)
        index = 0
        completion_tokens = 0
        reasoning_tokens = 0

        tool = _tool_command(source) if request.tools else None
        if request.reasoning.enabled or (request.reasoning.effort not in (None, "none")):
            thought = f"Thinking: {source}"
            yield PartStart(index, "reasoning")
            for count, word in enumerate(_WORDS.findall(thought), 1):
                yield PartDelta(index, word)
                if count % WORDS_PER_TURN == 0:
                    await asyncio.sleep(0)
            signature = "echo-" + hashlib.sha256(thought.encode()).hexdigest()[:32]
            yield PartEnd(index, signature=signature)
            reasoning_tokens = count_words(thought)
            index += 1

        if tool is not None:
            name, arguments = tool
            yield PartStart(index, "tool_call", tool_call_id=tool_call_id(), tool_name=name)
            # Two fragments, so clients see arguments streamed as real upstreams do.
            middle = len(arguments) // 2
            for fragment in (arguments[:middle], arguments[middle:]):
                if fragment:
                    yield PartDelta(index, fragment)
            yield PartEnd(index)
            usage = Usage(prompt_tokens, count_words(arguments) + reasoning_tokens, reasoning_tokens)
            yield MessageEnd(FinishReason.TOOL_CALLS, usage)
            return

        reply, finish, matched = _truncate(source, request.sampling.stop, request.sampling.max_tokens)
        if reply:
            yield PartStart(index, "text")
            for count, word in enumerate(_WORDS.findall(reply), 1):
                completion_tokens += 1 if word.strip() else 0
                yield PartDelta(index, word)
                if count % WORDS_PER_TURN == 0:
                    await asyncio.sleep(0)
            yield PartEnd(index)
        usage = Usage(prompt_tokens, completion_tokens + reasoning_tokens, reasoning_tokens)
        yield MessageEnd(finish, usage, matched)

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        size = request.dimensions or EMBEDDING_SIZE
        if not 1 <= size <= MAX_EMBEDDING_DIMENSIONS:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"dimensions must be between 1 and {MAX_EMBEDDING_DIMENSIONS}", param="dimensions")
        if size * len(request.inputs) <= EMBEDDING_SIZE * 16:  # small: not worth a thread
            vectors = _vectors(request.inputs, size)
        else:
            vectors = await asyncio.to_thread(_vectors, request.inputs, size)
        tokens = sum(count_words(text) for text in request.inputs)
        return EmbeddingResponse(model=model, vectors=vectors, usage=Usage(prompt_tokens=tokens))

    async def count_tokens(self, request: ChatRequest, model: str) -> int | None:
        return count_words(request.prompt or "") + sum(count_words(_message_text(m)) for m in request.messages)


def _message_text(message: Message) -> str:
    texts = []
    for part in message.parts:
        if isinstance(part, (TextPart, ToolResultPart)):
            texts.append(part.text)
    return " ".join(texts)


def _last_input_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role is Role.TOOL or any(isinstance(p, ToolResultPart) for p in message.parts):
            return " ".join(p.text for p in message.parts if isinstance(p, ToolResultPart)) or message.text
        if message.role is Role.USER:
            return message.text
    return ""


def _tool_command(text: str) -> tuple[str, str] | None:
    match = _TOOL_COMMAND.match(text.strip())
    if not match:
        return None
    name, raw = match.group(1), match.group(2).strip() or "{}"
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        raw = orjson.dumps({"input": raw}).decode()
    return name, raw


def _truncate(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, FinishReason, str | None]:
    finish, matched = FinishReason.STOP, None
    cut = len(text)
    for sequence in stop:
        position = text.find(sequence) if sequence else -1
        if 0 <= position < cut:
            cut, matched = position, sequence
    if matched is not None:
        text, finish = text[:cut], FinishReason.STOP_SEQUENCE
    if max_tokens is not None:
        words = _WORDS.findall(text)
        counted = 0
        for i, word in enumerate(words):
            counted += 1 if word.strip() else 0
            if counted > max_tokens:
                return "".join(words[:i]), FinishReason.LENGTH, None
    return text, finish, matched


def _vectors(texts: list[str], size: int) -> list[list[float]]:
    return [_vector(text, size) for text in texts]


def _vector(text: str, size: int) -> list[float]:
    """A unit vector derived from the text's hash: same text, same vector (one pass over the text)."""
    raw = hashlib.shake_256(text.encode()).digest(size * 4)
    values = [v / 2**31 for v in struct.unpack(f"<{size}i", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
