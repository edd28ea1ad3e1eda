"""One finished call as usage tracking, metrics, the request log and tracing see it.

The gateway fills a :class:`CallOutcome` as the call goes (target, attempts, time to first token,
usage) and hands it, finished, to each observer, which only queues it: nothing on the request path
waits on a database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dragoman.core.service import CallContext
from dragoman.core.types import Usage
from dragoman.errors import ErrorKind


@dataclass(slots=True)
class CallOutcome:
    """One finished request (no prompt, no key)."""

    ctx: CallContext
    kind: str  # chat | embeddings
    requested_model: str
    stream: bool
    target: str | None = None  # <backend>/<model> that served (or last failed)
    backend: str | None = None
    attempts: int = 0
    status: int = 200
    error_kind: str | None = None
    usage: Usage = field(default_factory=Usage)
    ttft: float | None = None  # seconds
    latency: float = 0.0
    cancelled: bool = False
    finish_reason: str | None = None

    def cancel(self) -> None:
        """The client left (or the call was cut) before the answer ended."""
        self.cancelled = True
        self.status, self.error_kind = 499, ErrorKind.CANCELLED.value


Observer = Callable[[CallOutcome], None]
