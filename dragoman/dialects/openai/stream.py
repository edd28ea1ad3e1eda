"""Canonical events -> OpenAI SSE chunks, flattened exactly as OpenAI streams them.

Role once in the first chunk; a tool call's id, type and name once in its first fragment,
then argument fragments by ``index``; one chunk with ``finish_reason``; with
``include_usage`` every chunk carries ``usage: null`` and a last ``choices: []`` chunk
carries the usage. Chunks are built from a byte template, not re-serialised models.
``system_fingerprint`` is left out (here and in whole answers): the spec types it as a string
when present, and dragoman has no backend fingerprint to give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from dragoman.core.accumulate import accumulate, accumulate_choices
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
from dragoman.core.service import ChatStream
from dragoman.core.types import ChatRequest, ChatResponse, ReasoningPart, Usage
from dragoman.dialects.openai.convert import (
    FINISH_REASONS,
    Choices,
    chat_logprobs,
    completion_logprobs,
    reasoning_detail,
    usage_body,
)
from dragoman.dialects.streaming import encoded
from dragoman.errors import GatewayError
from dragoman.protocols.openai import error_body

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


def sse_frames(events: ChatStream, encoder: ChunkEncoder) -> AsyncIterator[bytes]:
    return encoded(events, encoder.encode, tail=DONE)


async def choice_frames(first: ChatStream, choices: Choices, start: Callable[[ChatRequest], Awaitable[ChatStream]],
                        *, completion: bool) -> AsyncIterator[bytes]:
    """Several generations (``n``, or a completion's prompts) as one stream, each chunk with its
    choice's index; one usage chunk for all at the end. Each prompt's first request asks for all
    ``n``: a backend that answers them at once (``MessageStart.choices``) has its choices relayed as
    they come; otherwise each next choice starts when the one before ends. ``first`` has started;
    a failure of a later start ends the stream with an error."""
    model, include_usage = choices.first.model, choices.first.include_usage
    tally = ChoiceUsage()
    encoder: ChunkEncoder | None = None
    for group, requests in enumerate(choices.groups):
        done = 0  # choices of this prompt answered so far
        while done < len(requests):
            request = requests[done]
            if group or done:
                try:
                    stream = await start(request)
                except GatewayError as exc:
                    yield b"data: " + orjson.dumps(error_body(exc)) + b"\n\n"
                    return
            else:
                stream = first
            multi = _MultiEncoder(model, include_usage, completion, group * choices.n + done, request, tally, group)
            async for frame in encoded(stream, multi.encode):
                yield frame
            if multi.failed:
                return
            encoder = multi.encoders[0]
            done += multi.carried
    if include_usage and encoder is not None:
        yield encoder.usage_frame(tally.total)
    yield DONE


class ChoiceUsage:
    """The usage of several generations as OpenAI counts ``n``: each prompt read once, every answer."""

    __slots__ = ("_counted", "total")

    def __init__(self) -> None:
        self.total = Usage()
        self._counted: set[int] = set()

    def add(self, usage: Usage, group: int) -> None:
        if group not in self._counted:
            self._counted.add(group)
            self.total.prompt_tokens += usage.prompt_tokens
            self.total.cached_tokens += usage.cached_tokens
        self.total.completion_tokens += usage.completion_tokens
        self.total.reasoning_tokens += usage.reasoning_tokens


class _MultiEncoder:
    """One generation's stream, which may carry several choices (``ChoiceEvent``): one encoder each."""

    def __init__(self, model: str, include_usage: bool, completion: bool, base: int, request: ChatRequest,
                 tally: ChoiceUsage, group: int) -> None:
        self._model, self._include_usage, self._completion = model, include_usage, completion
        self._prompt_chars = len(request.prompt or "")
        self._base, self._tally, self._group = base, tally, group
        self.encoders = [self._make(base)]
        self.carried = 1
        self.failed = False

    def _make(self, index: int) -> ChunkEncoder:
        return ChunkEncoder(self._model, include_usage=self._include_usage, completion=self._completion, index=index,
                            usage_chunk=False, prompt_chars=self._prompt_chars)

    def encode(self, event: Event) -> bytes:
        if isinstance(event, ChoiceEvent):
            return self.encoders[event.choice].encode(event.event) if event.choice < self.carried else b""
        if isinstance(event, MessageStart):
            self.carried = max(1, event.choices)
            self.encoders += [self._make(self._base + c) for c in range(1, self.carried)]
            for encoder in self.encoders[1:]:
                encoder.encode(event)
        elif isinstance(event, MessageEnd):
            self._tally.add(event.usage, self._group)
        elif isinstance(event, StreamError):
            self.failed = True
        return self.encoders[0].encode(event)


async def whole_choices(choices: Choices, start: Callable[[ChatRequest], Awaitable[ChatStream]]
                        ) -> tuple[list[ChatResponse], dict[str, str] | None, GatewayError | None]:
    """Every choice of a whole answer, in index order (as ``choice_frames`` runs them), the first
    answer's headers, and a failure after routing (with the failing answer's headers)."""
    responses: list[ChatResponse] = []
    headers: dict[str, str] | None = None
    for requests in choices.groups:
        done = 0
        while done < len(requests):
            stream = await start(requests[done])
            headers = headers or stream.headers
            try:  # one request, one choice (the common case): the plain accumulation
                answers = await accumulate_choices(stream) if requests[done].n > 1 else [await accumulate(stream)]
            except GatewayError as exc:
                return responses, stream.headers, exc
            finally:
                await stream.aclose()
            answers = answers[:len(requests) - done]
            responses += answers
            done += len(answers)
    return responses, headers, None
