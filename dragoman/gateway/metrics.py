"""Prometheus metrics for ``GET /metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` instead of the process-wide default, so
several apps in one process (tests, embedding) never clash over metric names. Model labels are
capped (``max_models``): names beyond the cap are reported as ``other``, because a label per
arbitrary client-supplied string would grow memory and scrape size without bound.

With several worker processes (``--workers``) a scrape reaches whichever worker accepts it, so
each worker's figures must be summed: :func:`process_metrics` then builds :class:`SharedMetrics`,
prometheus_client's multiprocess mode (each process writes its values to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR``, a private directory the supervisor creates and removes; a scrape
merges every file). Counters keep the counts of workers that died; gauges are summed over the
live workers only. One process keeps :class:`Metrics`: plain Python counters, nothing written.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; LLM requests range from a few ms (cached, tiny) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# prometheus_client's switch to multiprocess mode; dragoman's supervisor sets it for its workers.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
REQUESTS_DOC = "Requests served, by client dialect, model and HTTP status."
LATENCY_DOC = "Time from request to the last byte sent."
TTFT_DOC = "Time from request to the first token sent."
TOKENS_DOC = "Tokens processed, by model and type (prompt or completion)."


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound >= value
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(``le``, count) pairs as Prometheus wants them: cumulative, bounds written like Go's."""
        total, buckets = 0, []
        for bound, count in zip((*map(repr, map(float, self.bounds)), "+Inf"), self.counts, strict=True):
            total += count
            buckets.append((bound, float(total)))
        return buckets


class RequestFigures(Collector):
    """Requests, latency, time to first token and tokens, counted in plain Python and turned into
    Prometheus families only when scraped.

    These four change on every request; prometheus_client's own metric objects take a lock and
    several calls per update, which showed as 3% of the gateway's instructions per request. Updates
    and scrapes both run on the event loop's thread."""

    def __init__(self, namespace: str) -> None:
        self._ns = namespace
        self.requests: dict[tuple[str, str, str], _Count] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.ttft: dict[tuple[str, str], _Histogram] = {}
        self.tokens: dict[tuple[str, str], _Count] = {}

    def series(self, dialect: str, label: str, status: int
               ) -> tuple[_Count, _Histogram, _Histogram, _Count, _Count]:
        """The cells one (dialect, model label, status) updates, created on first use."""
        return (self.requests.setdefault((dialect, label, str(status)), _Count()),
                self.latency.setdefault((dialect, label), _Histogram(LATENCY_BUCKETS)),
                self.ttft.setdefault((dialect, label), _Histogram(TTFT_BUCKETS)),
                self.tokens.setdefault((label, "prompt"), _Count()),
                self.tokens.setdefault((label, "completion"), _Count()))

    def collect(self) -> Iterator[Metric]:
        ns = self._ns
        requests = CounterMetricFamily(f"{ns}_requests", REQUESTS_DOC, labels=["dialect", "model", "status"])
        for status_labels, count in self.requests.items():
            requests.add_metric(list(status_labels), count.value)
        yield requests
        for name, doc, table in (
            ("request_duration_seconds", LATENCY_DOC, self.latency),
            ("time_to_first_token_seconds", TTFT_DOC, self.ttft),
        ):
            family = HistogramMetricFamily(f"{ns}_{name}", doc, labels=["dialect", "model"])
            for labels, histogram in table.items():
                family.add_metric(list(labels), histogram.cumulative(), histogram.sum)
            yield family
        tokens = CounterMetricFamily(f"{ns}_tokens", TOKENS_DOC, labels=["model", "type"])
        for token_labels, count in self.tokens.items():
            tokens.add_metric(list(token_labels), count.value)
        yield tokens


def process_metrics(*, namespace: str = "dragoman", max_models: int = 500) -> Metrics:
    """This process's metrics: summed over the processes sharing ``PROMETHEUS_MULTIPROC_DIR`` when
    it is set (prometheus_client's own rule, which its metric objects follow already), else its own."""
    path = os.environ.get(MULTIPROC_DIR)
    if path:
        return SharedMetrics(path, namespace=namespace, max_models=max_models)
    return Metrics(namespace=namespace, max_models=max_models)


class Metrics:
    def __init__(self, *, namespace: str = "dragoman", max_models: int = 500) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_models = max_models
        self._models: set[str] = set()
        self._children: dict[tuple[str, str, int], tuple[_Count, _Histogram, _Histogram, _Count, _Count]] = {}
        self.figures = RequestFigures(namespace)
        self.registry.register(self.figures)
        self._instruments(namespace, self.registry)

    def _instruments(self, ns: str, reg: CollectorRegistry | None) -> None:
        """The metrics prometheus_client counts itself (rarer than requests). Gauges are summed
        over live processes in multiprocess mode; one process ignores ``multiprocess_mode``."""
        self.active_streams = Gauge("active_streams", "Streaming responses in progress.",
                                    namespace=ns, registry=reg, multiprocess_mode="livesum")
        self.upstream_errors = Counter("upstream_errors", "Errors from backends, by backend and error kind.",
                                       ["backend", "kind"], namespace=ns, registry=reg)
        self.rate_limited_total = Counter("rate_limited", "Requests refused by limits, by reason.",
                                          ["reason"], namespace=ns, registry=reg)
        self.usage_queue_depth = Gauge("usage_queue_depth", "Usage records waiting to be written.",
                                       namespace=ns, registry=reg, multiprocess_mode="livesum")
        self.usage_dropped = Counter("usage_dropped", "Usage records dropped (queue full or rejected).",
                                     namespace=ns, registry=reg)

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < self._max_models:
            self._models.add(model)
            return model
        return "other"

    def observe_request(
        self,
        *,
        dialect: str,
        model: str,
        status: int,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Everything about one finished request in one call (the pipeline's hook); its cells are
        cached per (dialect, model, status), as this runs on every request."""
        key = (dialect, model, status)
        children = self._children.get(key)
        if children is None:
            children = self.figures.series(dialect, self.model_label(model), status)
            if len(self._children) < 4 * self._max_models:
                self._children[key] = children
        requests, latency, ttft, prompt, completion = children
        requests.value += 1
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        prompt.value += prompt_tokens
        completion.value += completion_tokens

    def stream_started(self) -> None:
        self.active_streams.inc()

    def stream_ended(self) -> None:
        self.active_streams.dec()

    def upstream_error(self, backend: str, kind: str) -> None:
        self.upstream_errors.labels(backend, kind).inc()

    def rate_limited(self, reason: str) -> None:
        self.rate_limited_total.labels(reason).inc()

    def track_usage_queue(self, depth: Callable[[], int]) -> None:
        """Read the usage queue's depth at scrape time (no per-record gauge updates)."""
        self.usage_queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def close(self) -> None:
        """Stop what :meth:`track_usage_queue` started (nothing here)."""


# One worker's cells for one (dialect, model, status): prometheus_client children writing to its files.
_SharedCells = tuple[Counter, Histogram, Histogram, Counter, Counter]

# Seconds between two writes of a worker's usage queue depth to its file (a scrape of the worker
# itself reads it fresh); a gauge is a snapshot, and this keeps the per-record path free of it.
GAUGE_REFRESH = 1.0


class SharedMetrics(Metrics):
    """The metrics of one of several worker processes, in prometheus_client's multiprocess mode:
    every update is written to this process's files in ``path``, and :meth:`render` merges all
    processes' files (see the module docstring). The supervisor calls
    ``prometheus_client.multiprocess.mark_process_dead`` for a worker that ended, so its gauges
    leave the sums while its counters stay in them."""

    def __init__(self, path: str, *, namespace: str = "dragoman", max_models: int = 500) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path)  # type: ignore[no-untyped-call]
        self._max_models = max_models
        self._models: set[str] = set()
        self._shared: dict[tuple[str, str, int], _SharedCells] = {}
        ns = namespace
        self._requests = Counter("requests", REQUESTS_DOC, ["dialect", "model", "status"], namespace=ns, registry=None)
        self._latency = Histogram("request_duration_seconds", LATENCY_DOC, ["dialect", "model"], namespace=ns,
                                  registry=None, buckets=LATENCY_BUCKETS)
        self._ttft = Histogram("time_to_first_token_seconds", TTFT_DOC, ["dialect", "model"], namespace=ns,
                               registry=None, buckets=TTFT_BUCKETS)
        self._tokens = Counter("tokens", TOKENS_DOC, ["model", "type"], namespace=ns, registry=None)
        self._instruments(namespace, None)
        self._depth: Callable[[], int] | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def observe_request(
        self,
        *,
        dialect: str,
        model: str,
        status: int,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        key = (dialect, model, status)
        cells = self._shared.get(key)
        if cells is None:
            label = self.model_label(model)
            cells = (self._requests.labels(dialect, label, str(status)), self._latency.labels(dialect, label),
                     self._ttft.labels(dialect, label), self._tokens.labels(label, "prompt"),
                     self._tokens.labels(label, "completion"))
            if len(self._shared) < 4 * self._max_models:
                self._shared[key] = cells
        requests, latency, ttft, prompt, completion = cells
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)

    def track_usage_queue(self, depth: Callable[[], int]) -> None:
        """Write this worker's queue depth every :data:`GAUGE_REFRESH` seconds (another worker's
        scrape reads it from the file), from a thread of its own until :meth:`close`."""
        self._depth = depth
        self._write_gauges()
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh, name="dragoman-metrics-gauges", daemon=True)
            self._refresher.start()

    def _refresh(self) -> None:
        while not self._stop.wait(GAUGE_REFRESH):
            self._write_gauges()

    def _write_gauges(self) -> None:
        if self._depth is not None:
            self.usage_queue_depth.set(float(self._depth()))

    def render(self) -> bytes:
        self._write_gauges()
        return bytes(generate_latest(self.registry))

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
