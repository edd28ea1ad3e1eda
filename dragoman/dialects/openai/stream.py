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


class ChoicesEncoder:
    """Several generations (``n``, or a completion's prompts) as one stream: each choice's chunks
    in turn, with its index (a choice starts at its ``MessageStart``); one usage chunk for all at
    the end. After an error the stream ends there, without ``[DONE]``."""

    def __init__(self, choices: Choices, *, completion: bool) -> None:
        self.choices = choices
        self.completion = completion
        self._encoder: ChunkEncoder | None = None
        self._next = 0  # the index of the choice the next MessageStart begins
        self._usages: list[Usage] = []
        self._failed = False

    def encode(self, event: Event) -> bytes:
        encoder = self._encoder
        if encoder is None or isinstance(event, MessageStart):
            index = min(self._next, len(self.choices.requests) - 1)
            self._next += 1
            first = self.choices.first
            encoder = self._encoder = ChunkEncoder(
                first.model, include_usage=first.include_usage, completion=self.completion, index=index,
                usage_chunk=False, prompt_chars=len(self.choices.requests[index].prompt or ""))
        if isinstance(event, MessageEnd):
            self._usages.append(event.usage)
        elif isinstance(event, StreamError):
            self._failed = True
        return encoder.encode(event)

    def tail(self) -> bytes:
        if self._failed:
            return b""
        usages, encoder = self._usages, self._encoder
        if not self.choices.first.include_usage or encoder is None:
            return DONE
        prompts = [u for i, u in enumerate(usages) if i % self.choices.n == 0]
        return encoder.usage_frame(Usage(prompt_tokens=sum(u.prompt_tokens for u in prompts),
                                         completion_tokens=sum(u.completion_tokens for u in usages),
                                         reasoning_tokens=sum(u.reasoning_tokens for u in usages),
                                         cached_tokens=sum(u.cached_tokens for u in prompts))) + DONE
