"""Prometheus metrics for ``GET /metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` instead of the process-wide default, so
several apps in one process (tests, embedding) never clash over metric names. Model labels are
capped (``max_models``): names beyond the cap are reported as ``other``, because a label per
arbitrary client-supplied string would grow memory and scrape size without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; LLM requests range from a few ms (cached, tiny) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, *, namespace: str = "dragoman", max_models: int = 500) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_models = max_models
        self._models: set[str] = set()
        self._children: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        ns, reg = namespace, self.registry
        self.requests = Counter("requests", "Requests served, by client dialect, model and HTTP status.",
                                ["dialect", "model", "status"], namespace=ns, registry=reg)
        self.latency = Histogram("request_duration_seconds", "Time from request to the last byte sent.",
                                 ["dialect", "model"], buckets=LATENCY_BUCKETS, namespace=ns, registry=reg)
        self.ttft = Histogram("time_to_first_token_seconds", "Time from request to the first token sent.",
                              ["dialect", "model"], buckets=TTFT_BUCKETS, namespace=ns, registry=reg)
        self.tokens = Counter("tokens", "Tokens processed, by model and type (prompt or completion).",
                              ["model", "type"], namespace=ns, registry=reg)
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
        """Everything about one finished request in one call (the pipeline's hook).

        The labelled children are cached per (dialect, model, status): ``labels()`` costs more
        than the increments, and this runs on every request."""
        key = (dialect, model, status)
        children = self._children.get(key)
        if children is None:
            label = self.model_label(model)
            children = (self.requests.labels(dialect, label, str(status)), self.latency.labels(dialect, label),
                        self.ttft.labels(dialect, label), self.tokens.labels(label, "prompt"),
                        self.tokens.labels(label, "completion"))
            if len(self._children) < 4 * self._max_models:
                self._children[key] = children
        requests, latency, ttft, prompt, completion = children
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)

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
