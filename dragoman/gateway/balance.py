"""Spreading requests over the deployments of one model: the strategies and the figures they read.

* ``weighted_random``: each deployment in proportion to its ``weight``. Stateless, so several
  instances spread alike; the default.
* ``least_busy``: the fewest requests in flight from this instance (ties: weighted random). Good
  when answers vary in length, as local engines (Ollama, llama.cpp) serve few at a time.
* ``lowest_latency``: the lowest moving average (EWMA, ``alpha``) of the time to the first event,
  measured by this instance. Deployments without a figure yet are tried first, and ``explore``
  of the requests (5%) go by weighted random so a figure never goes stale for good.

In-flight counts and latencies are per process: they describe what this instance sees, which is
what it can act on without a round trip.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from dragoman.config import Strategy
from dragoman.gateway.deployments import Deployment


class Balancer:
    def __init__(self, *, alpha: float = 0.3, explore: float = 0.05, rng: random.Random | None = None) -> None:
        self.alpha = alpha
        self.explore = explore
        self.rng = rng or random.Random()
        self.in_flight: dict[str, int] = {}
        self.latency: dict[str, float] = {}  # seconds to the first event, EWMA

    def begin(self, deployment: str) -> None:
        self.in_flight[deployment] = self.in_flight.get(deployment, 0) + 1

    def end(self, deployment: str) -> None:
        left = self.in_flight.get(deployment, 0) - 1
        if left > 0:
            self.in_flight[deployment] = left
        else:
            self.in_flight.pop(deployment, None)

    def observe(self, deployment: str, seconds: float) -> None:
        previous = self.latency.get(deployment)
        self.latency[deployment] = seconds if previous is None else previous + self.alpha * (seconds - previous)

    def choose(self, strategy: Strategy, candidates: Sequence[Deployment]) -> Deployment:
        """One of ``candidates`` (not empty; all of the same priority)."""
        if len(candidates) == 1:
            return candidates[0]
        if strategy == "least_busy":
            busy = self.in_flight
            least = min(busy.get(d.id, 0) for d in candidates)
            return self._weighted([d for d in candidates if busy.get(d.id, 0) == least])
        if strategy == "lowest_latency":
            unmeasured = [d for d in candidates if d.id not in self.latency]
            if unmeasured:
                return self._weighted(unmeasured)
            if self.rng.random() < self.explore:
                return self._weighted(candidates)
            return min(candidates, key=lambda d: self.latency[d.id])
        return self._weighted(candidates)

    def _weighted(self, candidates: Sequence[Deployment]) -> Deployment:
        if len(candidates) == 1:
            return candidates[0]
        point = self.rng.random() * sum(d.weight for d in candidates)
        for deployment in candidates:
            point -= deployment.weight
            if point < 0:
                return deployment
        return candidates[-1]
