"""Canonical events -> OpenAI SSE chunks, flattened exactly as OpenAI streams them.

Role once in the first chunk; a tool call's id, type and name once in its first fragment,
then argument fragments by ``index``; one chunk with ``finish_reason``; with
``include_usage`` every chunk carries ``usage: null`` and a last ``choices: []`` chunk
carries the usage. Chunks are built from a byte template, not re-serialised models.
``system_fingerprint`` is left out (here and in whole answers): the spec types it as a string
when present, and dragoman has no backend fingerprint to give.
"""

from __future__ import annotations

from typing import Any

import orjson

from dragoman.core.events import (
    ChoiceEvent,
    Event,
    Logprobs,
    MessageEnd,
    MessageStart,
    PartDelta,
    PartEnd,
    PartStart,
    StreamError,
)
from dragoman.core.types import ReasoningPart, Usage
from dragoman.dialects.openai.convert import (
    Choices,
    chat_logprobs,
    completion_logprobs,
    reasoning_detail,
    usage_body,
)
from dragoman.protocols.openai import FINISH_REASONS, error_body

DONE = b"data: [DONE]\n\n"


class ChunkEncoder:
    """One per response; ``object`` is ``chat.completion.chunk`` or ``text_completion``."""

    def __init__(self, model: str, *, include_usage: bool, completion: bool = False, index: int = 0,
                 usage_chunk: bool = True, prompt_chars: int = 0) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage_chunk = usage_chunk and include_usage  # False: the caller sends one for all choices
        self.completion = completion
        self._index = str(index).encode()
        self._logprobs: list[dict[str, Any]] = []  # entries waiting for the next text chunk
        self._offset = prompt_chars  # a completion's text_offset: where the next token starts
        self._prefix = b""
        self._suffix = b',"usage":null}' if include_usage else b"}"
        self._kinds: dict[int, str] = {}
        self._tool_index: dict[int, int] = {}
        self._reasoning_index: dict[int, int] = {}
        self._reasoning_text: dict[int, list[str]] = {}
        self._role_sent = False

    def encode(self, event: Event) -> bytes:
        if not self._role_sent and not isinstance(event, (MessageStart, StreamError)) and not self.completion:
            # The role chunk waits for the first part: a tool-call turn carries content null, as OpenAI's does.
            self._role_sent = True
            if isinstance(event, PartStart) and event.kind == "tool_call":
                self._kinds[event.index] = event.kind
                position = self._tool_index[event.index] = len(self._tool_index)
                return self._delta({"role": "assistant", "content": None, "tool_calls": [{
                    "index": position, "id": event.tool_call_id, "type": "function",
                    "function": {"name": event.tool_name, "arguments": ""}}]})
            return self._delta({"role": "assistant", "content": ""}) + self.encode(event)
        if isinstance(event, PartDelta):
            kind = self._kinds[event.index]
            if kind == "text":
                return self._delta({"content": event.text}) if not self.completion else self._text(event.text)
            if kind == "reasoning":
                if event.index in self._reasoning_text:
                    self._reasoning_text[event.index].append(event.text)
                return b"" if self.completion else self._delta({"reasoning_content": event.text})
            return self._delta({"tool_calls": [{"index": self._tool_index[event.index],
                                                "function": {"arguments": event.text}}]})
        if isinstance(event, PartStart):
            self._kinds[event.index] = event.kind
            if event.kind == "tool_call":
                position = len(self._tool_index)
                self._tool_index[event.index] = position
                return self._delta({"tool_calls": [{
                    "index": position, "id": event.tool_call_id, "type": "function",
                    "function": {"name": event.tool_name, "arguments": ""}}]})
            if event.kind == "reasoning":
                self._reasoning_index[event.index] = len(self._reasoning_index)
                self._reasoning_text[event.index] = []
                if event.redacted is not None and not self.completion:
                    part = ReasoningPart(redacted=event.redacted)
                    detail = reasoning_detail(part, self._reasoning_index[event.index])
                    return self._delta({"reasoning_details": [detail]})
            return b""
        if isinstance(event, PartEnd):
            text = self._reasoning_text.pop(event.index, None)
            if event.signature and text is not None and not self.completion:
                part = ReasoningPart(text="".join(text), signature=event.signature)
                return self._delta({"reasoning_details": [reasoning_detail(part,
                                                                           self._reasoning_index[event.index])]})
            return b""
        if isinstance(event, MessageStart):
            obj = "text_completion" if self.completion else "chat.completion.chunk"
            self._prefix = (b'{"id":' + orjson.dumps(event.id if not self.completion else
                                                     "cmpl-" + event.id.removeprefix("chatcmpl-"))
                            + b',"object":"' + obj.encode() + b'","created":' + str(event.created).encode()
                            + b',"model":' + orjson.dumps(self.model) + b',"choices":')
            return b""
        if isinstance(event, Logprobs):
            self._logprobs += event.entries
            return b""
        if isinstance(event, MessageEnd):
            reason = orjson.dumps(FINISH_REASONS[event.finish_reason])
            if self.completion:
                out = self._frame(b'[{"text":"","index":' + self._index + b',"logprobs":' + self._pending()
                                  + b',"finish_reason":' + reason + b"}]")
            else:
                out = self._frame(b'[{"index":' + self._index + b',"delta":{},"logprobs":' + self._pending()
                                  + b',"finish_reason":' + reason + b"}]")
            if self.usage_chunk:
                out += self.usage_frame(event.usage)
            return out
        if isinstance(event, StreamError):
            return b"data: " + orjson.dumps(error_body(event.error)) + b"\n\n"
        return b""

    def tail(self) -> bytes:
        return DONE

    def usage_frame(self, usage: Usage) -> bytes:
        """The last chunk of ``include_usage``: no choices, the usage."""
        return b"data: " + self._prefix + b'[],"usage":' + orjson.dumps(usage_body(usage)) + b"}\n\n"

    def _frame(self, choices: bytes) -> bytes:
        return b"data: " + self._prefix + choices + self._suffix + b"\n\n"

    def _pending(self, take: bool = True) -> bytes:
        """The waiting logprob entries in this endpoint's shape (``null`` when none), handed out once."""
        if not take or not self._logprobs:
            return b"null"
        entries, self._logprobs = self._logprobs, []
        if not self.completion:
            return orjson.dumps(chat_logprobs(entries))
        body = completion_logprobs(entries, self._offset)
        self._offset += sum(len(e["token"]) for e in entries)
        return orjson.dumps(body)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._frame(b'[{"index":' + self._index + b',"delta":' + orjson.dumps(delta) + b',"logprobs":'
                           + self._pending("content" in delta) + b',"finish_reason":null}]')

    def _text(self, text: str) -> bytes:
        return self._frame(b'[{"text":' + orjson.dumps(text) + b',"index":' + self._index + b',"logprobs":'
                           + self._pending() + b',"finish_reason":null}]')


class ChoicePlan:
    """Which of a request's generations (``Choices.requests``, in choice order) still have to run.
    Each prompt's first request asks for all ``n``: a stream that carried them
    (``MessageStart.choices``) answered the prompt's other requests too (``Generation.needed``)."""

    __slots__ = ("answered", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.answered = 0  # choices answered or under way so far

    def started(self, event: MessageStart) -> int:
        """A stream began: the index of its first choice (it carries ``event.choices`` from there,
        never past its prompt's last)."""
        base = self.answered
        self.answered += max(1, min(event.choices, self.n - base % self.n))
        return base

    def needed(self, index: int) -> bool:
        return index >= self.answered


class ChoicesEncoder:
    """Several generations (``n``, or a completion's prompts) as one stream, each chunk with its
    choice's index: a stream carrying several choices (``ChoiceEvent``) has one encoder per choice,
    its chunks interleaved as they come; otherwise each choice's chunks in turn (a stream starts at
    its ``MessageStart``). One usage chunk for all at the end, each prompt read once. After an
    error the stream ends there, without ``[DONE]``."""

    def __init__(self, choices: Choices, *, completion: bool, plan: ChoicePlan | None = None) -> None:
        self.choices = choices
        self.completion = completion
        self.plan = plan or ChoicePlan(choices.n)
        self._encoders: list[ChunkEncoder] = []  # the current stream's, one per choice it carries
        self._base = 0  # the index of the current stream's first choice
        self._usages: list[tuple[int, Usage]] = []  # each stream's first choice index and usage
        self._failed = False

    def _encoder(self, index: int) -> ChunkEncoder:
        index = min(index, len(self.choices.requests) - 1)
        first = self.choices.first
        return ChunkEncoder(first.model, include_usage=first.include_usage, completion=self.completion, index=index,
                            usage_chunk=False, prompt_chars=len(self.choices.requests[index].prompt or ""))

    def encode(self, event: Event) -> bytes:
        encoders = self._encoders
        if isinstance(event, ChoiceEvent):
            return encoders[event.choice].encode(event.event) if event.choice < len(encoders) else b""
        if isinstance(event, MessageStart):
            base = self._base = self.plan.started(event)
            encoders = self._encoders = [self._encoder(base + c) for c in range(self.plan.answered - base)]
            for encoder in encoders[1:]:
                encoder.encode(event)
        elif not encoders:
            encoders = self._encoders = [self._encoder(self.plan.answered)]
        if isinstance(event, MessageEnd):
            self._usages.append((self._base, event.usage))
        elif isinstance(event, StreamError):
            self._failed = True
        return encoders[0].encode(event)

    def tail(self) -> bytes:
        if self._failed:
            return b""
        if not self.choices.first.include_usage or not self._encoders:
            return DONE
        n = self.choices.n
        usages = [u for _, u in self._usages]
        prompts = [u for base, u in self._usages if base % n == 0]
        return self._encoders[0].usage_frame(Usage(prompt_tokens=sum(u.prompt_tokens for u in prompts),
                                                   completion_tokens=sum(u.completion_tokens for u in usages),
                                                   reasoning_tokens=sum(u.reasoning_tokens for u in usages),
                                                   cached_tokens=sum(u.cached_tokens for u in prompts))) + DONE
