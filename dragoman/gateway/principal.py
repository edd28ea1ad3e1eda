"""Who a key is and what it may do: the caller as the pipeline sees it, and a key as people see it.

Kept apart from the key service so that everything that needs only these (limits, static keys)
does not import the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling, as the pipeline needs it: access and limits, no secret."""

    key_id: str
    name: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_tokens: int | None = None
    budget_cost: float | None = None
    budget_period: str | None = None
    expires_at: datetime | None = None
    enabled: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def anonymous(cls) -> Principal:
        """The caller under ``auth.mode: none`` or ``forward``: every model, no limits."""
        return cls(key_id="", name="anonymous")

    def may_use(self, *names: str) -> bool:
        """True if any of ``names`` (``<backend>/<model>``, alias) matches any of the key's globs."""
        for pattern in self.models:
            if pattern == "*":
                return True
            for name in names:
                if fnmatchcase(name, pattern):
                    return True
        return False

    def may_manage_models(self) -> bool:
        """Pull, create, copy and delete models: keys whose metadata says ``admin: true``."""
        return self.metadata.get("admin") is True

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(slots=True, frozen=True)
class KeyInfo:
    """A key as the admin UI and CLI show it (``hint``: the secret's last 4 characters; empty for
    static keys, whose secrets are chosen by people)."""

    id: str
    name: str
    hint: str
    models: tuple[str, ...]
    expires_at: datetime | None
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_tokens: int | None
    budget_cost: float | None
    budget_period: str | None
    enabled: bool
    metadata: dict[str, Any]
    created_at: datetime
    last_used_at: datetime | None
    source: Literal["database", "config"] = "database"  # config: a static key, read-only here

    def principal(self) -> Principal:
        return Principal(
            key_id=self.id, name=self.name, models=self.models, rpm=self.rpm, tpm=self.tpm,
            max_parallel=self.max_parallel, budget_tokens=self.budget_tokens, budget_cost=self.budget_cost,
            budget_period=self.budget_period, expires_at=self.expires_at, enabled=self.enabled,
            metadata=self.metadata,
        )
