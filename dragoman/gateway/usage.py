"""Usage records: what each request used, queued on the request path and written in batches.

``record()`` is synchronous and O(1): it appends to a bounded in-memory queue and returns. A
background task writes batches (every ``flush_interval`` seconds, or sooner once ``batch_size``
records wait). A slow or unreachable database therefore never slows or fails a request: failed
writes are retried with exponential backoff while records keep queueing up to ``max_queue``;
past that, new records are dropped, counted (``dropped``, a metric) and logged at most every
10 s. ``aclose()`` writes whatever is left (bounded by a timeout) on graceful shutdown.

A record never holds the prompt, the answer or the key's secret: only who, what model, how many
tokens, how long and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.timeutil import utcnow

if TYPE_CHECKING:
    from dragoman.gateway.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRecord:
    dialect: str  # the client's dialect: openai, anthropic, ollama
    requested_model: str  # the name the client sent (an alias or <backend>/<model>)
    ts: datetime = field(default_factory=utcnow)
    key_id: str | None = None
    key_name: str | None = None
    backend: str | None = None  # the backend that finally answered (after fallbacks)
    upstream_model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # includes reasoning tokens, as every upstream counts them
    reasoning_tokens: int = 0
    tokens_estimated: bool = False  # counted by dragoman because the upstream gave no figures
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    error_type: str | None = None  # an ErrorKind value when the request failed
    attempts: int = 1
    cancelled: bool = False
    cost: float | None = None  # filled from the price table when left None
    request_id: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True, frozen=True)
class Price:
    """Prices per million tokens."""

    input: float
    output: float


class PriceTable:
    """``prices: {"up/gpt-4o": {input: 2.5, output: 10.0}, "local/*": {input: 0, output: 0}}``.

    Keys are names or globs over ``<backend>/<model>`` and alias names. A record is priced by its
    upstream name (``<backend>/<upstream model>``), then by the name the client asked for: an exact
    key for either wins over any glob; otherwise the first glob (in the config's order) matching
    the upstream name, then the requested name.
    """

    def __init__(self, prices: Mapping[str, Mapping[str, float] | Price] | None = None) -> None:
        self._exact: dict[str, Price] = {}
        self._globs: list[tuple[str, Price]] = []
        for name, spec in (prices or {}).items():
            price = spec if isinstance(spec, Price) else _price(name, spec)
            if any(ch in name for ch in "*?["):
                self._globs.append((name, price))
            else:
                self._exact[name] = price
        self._memo: dict[tuple[str, ...], Price | None] = {}

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def price_for(self, *names: str | None) -> Price | None:
        """The price of the first of ``names`` (most specific first) that has one."""
        key = tuple(n for n in names if n)
        if key in self._memo:
            return self._memo[key]
        found = next((self._exact[n] for n in key if n in self._exact), None)
        if found is None:
            found = next((p for n in key for glob, p in self._globs if fnmatchcase(n, glob)), None)
        if len(self._memo) >= 4096:  # bounded: model names come from clients
            self._memo.clear()
        self._memo[key] = found
        return found

    def cost(self, prompt_tokens: int, completion_tokens: int, *names: str | None) -> float | None:
        price = self.price_for(*names)
        if price is None:
            return None
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000

    def cost_of(self, rec: UsageRecord) -> float | None:
        upstream = f"{rec.backend}/{rec.upstream_model}" if rec.backend and rec.upstream_model else None
        return self.cost(rec.prompt_tokens, rec.completion_tokens, upstream, rec.requested_model)


def _price(name: str, spec: Mapping[str, float]) -> Price:
    unknown = set(spec) - {"input", "output"}
    if unknown:
        raise ValueError(f"prices[{name!r}]: unknown field(s) {', '.join(sorted(unknown))} (use input, output)")
    try:
        price = Price(float(spec.get("input", 0.0)), float(spec.get("output", 0.0)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"prices[{name!r}]: input and output must be numbers") from exc
    if price.input < 0 or price.output < 0:
        raise ValueError(f"prices[{name!r}]: prices cannot be negative")
    return price


class RejectedRecords(Exception):
    """Raised by a sink for records that can never be written (bad data): dropped, not retried."""


class UsageSink(Protocol):
    async def write_usage(self, records: Sequence[UsageRecord]) -> None: ...


class UsageRecorder:
    """The queue between the request path and the usage table (see the module docstring).

    ``record()`` must be called on the event loop's thread.
    """

    def __init__(
        self,
        sink: UsageSink,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_backoff: float = 30.0,
        close_timeout: float = 10.0,
        prices: PriceTable | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._sink = sink
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._prices = prices if prices else None
        self._metrics = metrics
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._warn_drop = ThrottledLog(log, 10.0)
        self._warn_fail = ThrottledLog(log, 10.0)
        self.dropped = 0
        self.written = 0
        if metrics is not None:
            metrics.track_usage_queue(lambda: self.depth)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def record(self, rec: UsageRecord) -> None:
        """Queue ``rec``; never blocks, never raises (a full queue drops it and counts that)."""
        if len(self._queue) >= self._max_queue or (self._closing and self._task is None):
            self._drop(1, "the usage queue is full" if not self._closing else "the recorder is closed")
            return
        self._queue.append(rec)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self._metrics is not None:
            self._metrics.usage_dropped.inc(count)
        self._warn_drop(logging.WARNING, "dropped %d usage record(s): %s (queue bound %d, %d dropped so far)",
                        count, why, self._max_queue, self.dropped)

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="dragoman-usage-writer")

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            timed_out = False
            try:
                await asyncio.wait_for(self._wake.wait(), backoff or self._flush_interval)
            except TimeoutError:
                timed_out = True
            self._wake.clear()
            if self._closing:
                break
            # Woken by a full batch: write full batches; on the interval (or retrying): everything.
            if await self.flush(full_only=not timed_out and not backoff):
                backoff = 0.0
            else:
                backoff = min(max(backoff * 2, 0.5), self._max_backoff)

    async def flush(self, *, full_only: bool = False) -> bool:
        """Write everything queued (or only full batches); False if the sink failed (the records
        stay queued)."""
        async with self._lock:
            while self._queue and (not full_only or len(self._queue) >= self._batch_size):
                batch = list(islice(self._queue, self._batch_size))
                if self._prices is not None:
                    for rec in batch:
                        if rec.cost is None:
                            rec.cost = self._prices.cost_of(rec)
                try:
                    await self._sink.write_usage(batch)
                except RejectedRecords as exc:
                    log.error("usage store rejected %d records; dropping them: %s", len(batch), exc)
                    self._pop(len(batch))
                    self._drop(len(batch), "rejected by the store")
                    continue
                except Exception as exc:  # noqa: BLE001 - any sink failure: keep the records and retry
                    self._warn_fail(logging.WARNING, "could not write %d usage records (%s); retrying",
                                    len(batch), exc)
                    return False
                self._pop(len(batch))
                self.written += len(batch)
        return True

    def _pop(self, count: int) -> None:
        # Only record() appends (at the right) while a write is awaited, so the batch is the left.
        for _ in range(count):
            self._queue.popleft()

    async def aclose(self) -> None:
        """Stop the writer and write what is left, retrying for up to ``close_timeout`` seconds;
        what still could not be written is counted as dropped."""
        timeout = self._close_timeout
        self._closing = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        backoff = 0.1
        while self._queue and loop.time() < deadline:
            try:
                ok = await asyncio.wait_for(self.flush(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                break
            if not ok:
                await asyncio.sleep(min(backoff, max(deadline - loop.time(), 0)))
                backoff = min(backoff * 2, 2.0)
        if self._queue:
            lost = len(self._queue)
            self._queue.clear()
            log.error("shutting down with %d usage records unwritten; they are lost", lost)
            self._drop(lost, "not written before shutdown")
