"""What a client-facing name resolves to: an ordered route of steps, each a set of deployments.

* A **deployment** is one concrete ``<backend>/<model>`` with a weight and a priority.
* A **step** is one client-facing model: its deployments and how to spread and retry over them
  (strategy, retries, timeouts). A ``models:`` entry of the config is a step.
* A **model route** is the steps tried in order: the requested model, then its fallbacks
  (``ModelRoute``; named apart from the HTTP routes of the dialects and the admin site, and
  walked by :mod:`dragoman.gateway.router`).

These are plain data the registry builds from :class:`ModelSpec` (the config's ``models:``
entries, translated by the app) and the router walks; the router never reads config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dragoman.backends.base import Backend, Timeouts
from dragoman.config import Strategy
from dragoman.core.models import ModelInfo


@dataclass(slots=True, frozen=True)
class Target:
    """One concrete place a request can go."""

    backend: Backend
    model: str  # upstream name
    info: ModelInfo
    id: str = field(init=False, compare=False)  # ``<backend>/<model>``; computed once, read on every attempt

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.backend.name}/{self.model}")


@dataclass(slots=True, frozen=True)
class DeploymentSpec:
    """A deployment as configured: ``target`` is a concrete name (``<backend>/<model>``, or a bare
    model served by exactly one backend); lower ``priority`` is tried first."""

    target: str
    weight: float = 1.0
    priority: int = 0


@dataclass(slots=True, frozen=True)
class ModelSpec:
    """A ``models:`` entry: one client-facing name served by several deployments.

    ``None`` fields fall back to the ``routing:`` defaults; ``timeouts`` is already merged with
    the global ones by the app."""

    name: str
    deployments: tuple[DeploymentSpec, ...]
    strategy: Strategy | None = None
    fallbacks: tuple[str, ...] = ()
    timeouts: Timeouts | None = None
    retries: int | None = None


@dataclass(slots=True, frozen=True)
class Deployment:
    target: Target
    weight: float = 1.0
    priority: int = 0
    id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.target.id)


@dataclass(slots=True, frozen=True)
class Step:
    """One model of a route. ``retries=None`` means the router's default."""

    name: str
    deployments: tuple[Deployment, ...]
    strategy: Strategy | None = None
    retries: int | None = None
    timeouts: Timeouts | None = None
    # The created model (``/api/create`` with ``from``) this step was reached through, if any: its
    # system prompt, template and parameters apply, whether it was asked for by name or via an alias.
    recipe: str | None = None


@dataclass(slots=True, frozen=True)
class ModelRoute:
    name: str  # as requested
    steps: tuple[Step, ...]
    deployment_count: int = field(init=False, compare=False)  # distinct deployments over all steps
    _targets: tuple[Target, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "deployment_count", len({d.id for step in self.steps for d in step.deployments}))
        seen: dict[str, Target] = {}  # routes are cached: ordered once, not per request
        for step in self.steps:
            for deployment in sorted(step.deployments, key=lambda d: d.priority):
                seen.setdefault(deployment.id, deployment.target)
        object.__setattr__(self, "_targets", tuple(seen.values()))

    def targets(self) -> list[Target]:
        """Every distinct target, in the order the route would reach them."""
        return list(self._targets)

    @property
    def first_target(self) -> Target:
        """Where the route starts: what a model listing or a token count describes."""
        return self._targets[0]
