"""Split ``<think>...</think>`` reasoning that some upstreams inline in their text.

Works on streamed deltas: a tag split across deltas is held back until it is complete or
proven not to be a tag, so a client never sees half a tag.
"""

from __future__ import annotations

from typing import Literal

Channel = Literal["text", "reasoning"]

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


class ThinkSplitter:
    __slots__ = ("_held", "_in_think", "_seen_text")

    def __init__(self) -> None:
        self._in_think = False
        self._held = ""
        self._seen_text = False

    def feed(self, delta: str) -> list[tuple[Channel, str]]:
        if not self._held and "<" not in delta:  # the usual delta: no tag can start here
            if not delta:
                return []
            if not self._in_think:
                self._seen_text = True
            return [("reasoning" if self._in_think else "text", delta)]
        out: list[tuple[Channel, str]] = []
        buf = self._held + delta
        self._held = ""
        while buf:
            tag = CLOSE_TAG if self._in_think else OPEN_TAG
            pos = buf.find(tag)
            if pos >= 0:
                self._emit(out, buf[:pos])
                buf = buf[pos + len(tag) :]
                self._in_think = not self._in_think
                if not self._in_think:
                    buf = buf.lstrip("\n") if buf else buf
                continue
            keep = _partial_suffix(buf, tag)
            self._emit(out, buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep :]
            break
        return out

    def flush(self) -> list[tuple[Channel, str]]:
        out: list[tuple[Channel, str]] = []
        self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: list[tuple[Channel, str]], text: str) -> None:
        if not text:
            return
        channel: Channel = "reasoning" if self._in_think else "text"
        if channel == "text":
            self._seen_text = True
        if out and out[-1][0] == channel:
            out[-1] = (channel, out[-1][1] + text)
        else:
            out.append((channel, text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
