"""The block-structured canonical stream.

Every backend yields these; every dialect encodes them. A stream is::

    MessageStart (PartStart PartDelta* PartEnd)* MessageEnd
    | ... StreamError          (anywhere, ends the stream)

Parts are sequential: one is closed before the next opens, and ``index`` counts from 0 in
the order parts started, which is exactly Anthropic's content-block index and the position
in ``ChatResponse.parts``. OpenAI's encoder flattens, Ollama's buffers tool calls until
``PartEnd``.

Several choices in one stream (OpenAI's ``n``, passed through to an upstream that answers them all
at once): ``MessageStart.choices`` says how many; choice 0's events are the plain ones above, and
every event of choice ``c >= 1`` comes wrapped as ``ChoiceEvent(c, event)`` (its parts indexed from
0 within the choice, its end a ``MessageEnd`` with zero usage). The stream's own ``MessageEnd`` ends
choice 0 and the stream, and carries the usage of all choices, so usage is counted once. A consumer
that knows nothing of choices sees a valid one-choice stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dragoman.core.types import FinishReason, Usage
from dragoman.errors import GatewayError

PartKind = Literal["text", "reasoning", "tool_call"]


@dataclass(slots=True)
class MessageStart:
    id: str
    model: str
    created: int
    prompt_tokens: int | None = None  # known up front by some backends (Anthropic, local)
    choices: int = 1  # how many choices the stream carries (``ChatRequest.n`` honoured upstream)


@dataclass(slots=True)
class PartStart:
    index: int
    kind: PartKind
    tool_call_id: str | None = None
    tool_name: str | None = None
    redacted: str | None = None  # a redacted reasoning block carries its opaque data whole


@dataclass(slots=True)
class PartDelta:
    """Text for text and reasoning parts; a JSON-text fragment for tool calls."""

    index: int
    text: str


@dataclass(slots=True)
class PartEnd:
    index: int
    signature: str | None = None  # reasoning signature, byte-exact


@dataclass(slots=True)
class MessageEnd:
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    # The prompt and answer as the model's token ids, from backends with a tokenizer (the local
    # runtime): what an Ollama ``/api/generate`` client sends back as ``context`` to continue.
    context: list[int] | None = None


@dataclass(slots=True)
class Logprobs:
    """Log probabilities of answer tokens, in generation order, as OpenAI's chat API shapes each:
    ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}``. Only in
    answers to requests that asked for them (``ChatRequest.logprobs``); dialects without
    logprobs ignore them."""

    entries: list[dict[str, Any]]


@dataclass(slots=True)
class StreamError:
    error: GatewayError


@dataclass(slots=True)
class ChoiceEvent:
    """An event of choice ``choice`` (>= 1) of a multi-choice stream."""

    choice: int
    event: Event


Event = MessageStart | PartStart | PartDelta | PartEnd | MessageEnd | Logprobs | StreamError | ChoiceEvent
