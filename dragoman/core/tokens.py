"""Token figures dragoman works out itself, when no tokenizer or backend gives exact ones."""

from __future__ import annotations

from dragoman.core.types import ChatRequest


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """About four characters a token: for usage a backend did not report, and budget reservations."""
    chars = len(request.prompt or "") + sum(len(m.text) for m in request.messages)
    return max(1, chars // 4)
