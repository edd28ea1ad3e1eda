"""Prometheus metrics for ``GET /metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` instead of the process-wide default, so
several apps in one process (tests, embedding) never clash over metric names. Model labels are
capped (``max_models``): names beyond the cap are reported as ``other``, because a label per
arbitrary client-supplied string would grow memory and scrape size without bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; LLM requests range from a few ms (cached, tiny) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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
        requests = CounterMetricFamily(f"{ns}_requests", "Requests served, by client dialect, model and HTTP status.",
                                       labels=["dialect", "model", "status"])
        for status_labels, count in self.requests.items():
            requests.add_metric(list(status_labels), count.value)
        yield requests
        for name, doc, table in (
            ("request_duration_seconds", "Time from request to the last byte sent.", self.latency),
            ("time_to_first_token_seconds", "Time from request to the first token sent.", self.ttft),
        ):
            family = HistogramMetricFamily(f"{ns}_{name}", doc, labels=["dialect", "model"])
            for labels, histogram in table.items():
                family.add_metric(list(labels), histogram.cumulative(), histogram.sum)
            yield family
        tokens = CounterMetricFamily(f"{ns}_tokens", "Tokens processed, by model and type (prompt or completion).",
                                     labels=["model", "type"])
        for token_labels, count in self.tokens.items():
            tokens.add_metric(list(token_labels), count.value)
        yield tokens


class Metrics:
    def __init__(self, *, namespace: str = "dragoman", max_models: int = 500) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_models = max_models
        self._models: set[str] = set()
        self._children: dict[tuple[str, str, int], tuple[_Count, _Histogram, _Histogram, _Count, _Count]] = {}
        ns, reg = namespace, self.registry
        self.figures = RequestFigures(namespace)
        reg.register(self.figures)
        self.active_streams = Gauge("active_streams", "Streaming responses in progress.",
                                    namespace=ns, registry=reg)
        self.upstream_errors = Counter("upstream_errors", "Errors from backends, by backend and error kind.",
                                       ["backend", "kind"], namespace=ns, registry=reg)
        self.rate_limited_total = Counter("rate_limited", "Requests refused by limits, by reason.",
                                          ["reason"], namespace=ns, registry=reg)
        self.usage_queue_depth = Gauge("usage_queue_depth", "Usage records waiting to be written.",
                                       namespace=ns, registry=reg)
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
