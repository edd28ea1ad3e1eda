"""UsageRecorder: batching, flush on close, overflow, a failing or slow store, prices; metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dragoman.gateway.metrics import Metrics
from dragoman.gateway.store import Store
from dragoman.gateway.usage import PriceTable, RejectedRecords, UsageRecord, UsageRecorder
from dragoman.gateway.usage_store import UsageStore


def rec(i: int = 0, **kw: object) -> UsageRecord:
    return UsageRecord("openai", f"m{i}", prompt_tokens=10, completion_tokens=5, **kw)  # type: ignore[arg-type]


class Sink:
    """A UsageSink that keeps batches and can be told to fail or stall."""

    def __init__(self) -> None:
        self.batches: list[list[UsageRecord]] = []
        self.fail = False
        self.stall: asyncio.Event | None = None
        self.calls = 0

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.stall is not None:
            await self.stall.wait()
        if self.fail:
            raise ConnectionError("database unavailable")
        self.batches.append(list(records))

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.batches)


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_batches_by_size_and_by_interval() -> None:
    sink = Sink()
    recorder = UsageRecorder(sink, batch_size=5, flush_interval=3600)
    await recorder.start()
    try:
        for i in range(12):
            recorder.record(rec(i))
        await wait_for(lambda: sink.count == 10)  # two full batches, written without waiting an hour
        assert [len(b) for b in sink.batches] == [5, 5]
        assert recorder.depth == 2
    finally:
        await recorder.aclose()
    assert sink.count == 12 and recorder.depth == 0  # the rest was flushed on close
    assert [r.requested_model for b in sink.batches for r in b] == [f"m{i}" for i in range(12)]

    sink2 = Sink()
    timed = UsageRecorder(sink2, batch_size=500, flush_interval=0.05)
    await timed.start()
    try:
        timed.record(rec())
        await wait_for(lambda: sink2.count == 1)
    finally:
        await timed.aclose()


async def test_overflow_is_counted_and_record_never_blocks() -> None:
    metrics = Metrics()
    sink = Sink()
    sink.fail = True
    recorder = UsageRecorder(sink, max_queue=100, batch_size=10, flush_interval=0.01, max_backoff=0.05,
                             close_timeout=0.2, metrics=metrics)
    await recorder.start()
    try:
        started = time.perf_counter()
        for i in range(150):
            recorder.record(rec(i))
        assert time.perf_counter() - started < 0.05  # synchronous, no I/O
        assert recorder.depth == 100 and recorder.dropped == 50
        assert b"dragoman_usage_dropped_total 50.0" in metrics.render()
        assert b"dragoman_usage_queue_depth 100.0" in metrics.render()
        await wait_for(lambda: sink.calls >= 3)  # retried with backoff
        assert recorder.depth == 100  # records are kept while the store is down
    finally:
        await recorder.aclose()
    assert recorder.dropped == 150  # what could not be written before shutdown is counted


async def test_store_recovers_after_failures() -> None:
    sink = Sink()
    sink.fail = True
    recorder = UsageRecorder(sink, batch_size=10, flush_interval=0.01, max_backoff=0.05)
    await recorder.start()
    try:
        for i in range(25):
            recorder.record(rec(i))
        await wait_for(lambda: sink.calls >= 2)
        sink.fail = False
        await wait_for(lambda: sink.count == 25)
        assert recorder.dropped == 0
    finally:
        await recorder.aclose()


async def test_slow_store_does_not_slow_record() -> None:
    sink = Sink()
    sink.stall = asyncio.Event()
    recorder = UsageRecorder(sink, batch_size=2, flush_interval=0.01)
    await recorder.start()
    try:
        recorder.record(rec(0))
        recorder.record(rec(1))
        await wait_for(lambda: sink.calls == 1)  # the writer is stuck in the store
        started = time.perf_counter()
        for i in range(1000):
            recorder.record(rec(i))
        assert time.perf_counter() - started < 0.1
        sink.stall.set()
        await wait_for(lambda: sink.count == 1002)
    finally:
        await recorder.aclose()


async def test_rejected_records_are_dropped_not_retried() -> None:
    class Rejecting(Sink):
        async def write_usage(self, records: Sequence[UsageRecord]) -> None:
            self.calls += 1
            if any(r.requested_model == "bad" for r in records):
                raise RejectedRecords("value too long")
            await super().write_usage(records)

    sink = Rejecting()
    recorder = UsageRecorder(sink, batch_size=1, flush_interval=0.01)
    recorder.record(UsageRecord("openai", "bad"))
    recorder.record(rec())
    await recorder.start()
    await recorder.aclose()
    assert recorder.dropped == 1 and sink.count == 1


async def test_closed_recorder_drops() -> None:
    recorder = UsageRecorder(Sink())
    await recorder.start()
    await recorder.aclose()
    recorder.record(rec())
    assert recorder.dropped == 1 and recorder.depth == 0


async def test_written_to_the_database_with_costs(sqlite_store: Store) -> None:
    usage = UsageStore(sqlite_store)
    prices = PriceTable({"up/gpt-4o": {"input": 2.5, "output": 10.0}, "up/*": {"input": 1, "output": 1},
                         "fast": {"input": 0.5, "output": 0.5}})
    recorder = UsageRecorder(usage, prices=prices, batch_size=3)
    await recorder.start()
    recorder.record(UsageRecord("openai", "smart", backend="up", upstream_model="gpt-4o", key_id="k1",
                                key_name="alice", prompt_tokens=1_000_000, completion_tokens=100_000,
                                latency_ms=12.5, ttft_ms=3.0, request_id="req-1"))
    recorder.record(UsageRecord("ollama", "fast", backend="up", upstream_model="other",
                                prompt_tokens=1_000_000, status=503, error_type="upstream_unavailable",
                                attempts=2))
    recorder.record(UsageRecord("anthropic", "local/x", prompt_tokens=5, cancelled=True, status=499,
                                tokens_estimated=True))
    await recorder.aclose()
    rows = {r.requested_model: r for r in await usage.recent()}
    assert rows["smart"].cost == pytest.approx(2.5 + 1.0)  # exact price of the upstream model
    assert rows["fast"].cost == pytest.approx(0.5)  # an exact (alias) price beats a glob
    assert rows["local/x"].cost is None  # no price known
    assert rows["smart"].key_name == "alice" and rows["smart"].ttft_ms == 3.0
    assert rows["smart"].request_id == "req-1"
    assert rows["fast"].attempts == 2 and rows["fast"].error_type == "upstream_unavailable"
    assert rows["local/x"].cancelled and rows["local/x"].tokens_estimated


def test_price_table_rules() -> None:
    prices = PriceTable({"a/*": {"input": 1, "output": 2}, "a/x": {"input": 3, "output": 4},
                         "*": {"input": 0, "output": 0}})
    assert prices.cost(1_000_000, 1_000_000, "a/x") == 7  # exact beats glob
    assert prices.cost(1_000_000, 0, "a/y") == 1  # first matching glob in order
    assert prices.cost(1_000_000, 0, "b/z") == 0
    assert PriceTable().cost(1, 1, "a") is None
    with pytest.raises(ValueError):
        PriceTable({"x": {"inptu": 1}})
    with pytest.raises(ValueError):
        PriceTable({"x": {"input": -1}})


def test_metrics_have_their_own_registry() -> None:
    a, b = Metrics(), Metrics(max_models=2)
    a.observe_request(dialect="openai", model="up/m", status=200, latency_s=0.2, ttft_s=0.05,
                      prompt_tokens=10, completion_tokens=3)
    a.stream_started()
    a.upstream_error("up", "timeout")
    a.rate_limited("rpm")
    text = a.render().decode()
    assert 'dragoman_requests_total{dialect="openai",model="up/m",status="200"} 1.0' in text
    assert 'dragoman_tokens_total{model="up/m",type="prompt"} 10.0' in text
    assert 'dragoman_tokens_total{model="up/m",type="completion"} 3.0' in text
    assert "dragoman_request_duration_seconds_bucket" in text
    assert "dragoman_time_to_first_token_seconds_count" in text
    assert "dragoman_active_streams 1.0" in text
    assert 'dragoman_upstream_errors_total{backend="up",kind="timeout"} 1.0' in text
    assert 'dragoman_rate_limited_total{reason="rpm"} 1.0' in text
    assert "up/m" not in b.render().decode()  # separate registries
    for model in ("m1", "m2", "m3", "m4"):
        b.observe_request(dialect="openai", model=model, status=200, latency_s=0.1)
    assert 'model="other"' in b.render().decode()  # label cardinality is capped


def test_request_histograms_are_cumulative_and_include_their_bound() -> None:
    """What Prometheus reads: ``le`` buckets counting observations <= the bound, cumulatively."""
    metrics = Metrics()
    for latency in (0.005, 0.007, 0.3, 700.0):
        metrics.observe_request(dialect="openai", model="x", status=200, latency_s=latency, ttft_s=0.02,
                                prompt_tokens=5, completion_tokens=2)
    metrics.observe_request(dialect="openai", model="x", status=502, latency_s=0.1)
    samples = {(s.name, s.labels.get("le"), s.labels.get("status"), s.labels.get("type")): s.value
               for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    latency = "dragoman_request_duration_seconds"
    assert samples[(f"{latency}_bucket", "0.005", None, None)] == 1
    assert samples[(f"{latency}_bucket", "0.01", None, None)] == 2
    assert samples[(f"{latency}_bucket", "0.1", None, None)] == 3
    assert samples[(f"{latency}_bucket", "600.0", None, None)] == 4
    assert samples[(f"{latency}_bucket", "+Inf", None, None)] == samples[(f"{latency}_count", None, None, None)] == 5
    assert samples[(f"{latency}_sum", None, None, None)] == pytest.approx(700.412)
    assert samples[("dragoman_time_to_first_token_seconds_bucket", "0.025", None, None)] == 4
    assert samples[("dragoman_requests_total", None, "200", None)] == 4
    assert samples[("dragoman_requests_total", None, "502", None)] == 1
    assert samples[("dragoman_tokens_total", None, None, "prompt")] == 20
    assert samples[("dragoman_tokens_total", None, None, "completion")] == 8


async def test_unreachable_database_never_blocks_record() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")  # nothing listens
    recorder = UsageRecorder(UsageStore(Store(engine)), max_queue=50, batch_size=10, flush_interval=0.01,
                             max_backoff=0.05, close_timeout=0.2)
    await recorder.start()
    try:
        started = time.perf_counter()
        for i in range(60):
            recorder.record(rec(i))
            await asyncio.sleep(0)
        assert time.perf_counter() - started < 0.5
        assert recorder.depth == 50 and recorder.dropped == 10
    finally:
        await recorder.aclose()
        await engine.dispose()
    assert recorder.dropped == 60 and recorder.written == 0


def test_every_string_column_is_cut_to_its_length() -> None:
    from dragoman.gateway.usage_store import _LIMITS, INSERT_COLUMNS, _row

    long = {name: "x" * (limit + 50) for name, limit in _LIMITS.items()}
    record = UsageRecord(**long)  # type: ignore[arg-type]
    row = dict(zip(INSERT_COLUMNS, _row(record, sqlite=True), strict=True))
    assert {name: len(row[name]) for name in _LIMITS} == _LIMITS
    short = dict(zip(INSERT_COLUMNS, _row(rec(1), sqlite=True), strict=True))
    assert (short["requested_model"], short["prompt_tokens"], short["key_id"]) == ("m1", 10, None)
