"""Static keys: API keys chosen by the operator (``auth.keys``, ``--api-key``, ``DRAGOMAN_API_KEY``).

They are hashed once, when the key service is built, and only the hashes are kept (in memory; never
in the database). They pass the same field checks as generated keys and authenticate to the same
:class:`Principal`, so models, limits and budgets apply alike. A static key's id is derived from its
name (``cfg_`` + 16 hex digits): usage and limits follow it across restarts and instances, also
when its secret is rotated. The configuration owns them: the admin UI and ``dragoman keys`` list
them with ``source="config"`` and refuse to edit or revoke them (409).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from dragoman.errors import ErrorKind, GatewayError, invalid_request
from dragoman.gateway.key_fields import check_budget, validate
from dragoman.gateway.principal import KeyInfo, Principal

if TYPE_CHECKING:
    from dragoman.config import Config

ID_PREFIX = "cfg_"


class StaticKey(NamedTuple):
    """A key from the configuration: its secret and its fields (``name``, ``models``, limits ...)."""

    secret: str
    fields: Mapping[str, Any]


def static_keys(config: Config) -> list[StaticKey]:
    """``auth.keys`` (``--api-key`` and ``DRAGOMAN_API_KEY`` among them) as the key service takes them."""
    return [StaticKey(k.key.get_secret_value(), k.key_fields()) for k in config.auth.keys]


def static_key_id(name: str) -> str:
    """The same on every instance and restart, and short enough for the usage table."""
    return ID_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:16]


class StaticKeyTable:
    """The static keys by hash; ``hash_secret`` must be the key service's own hash."""

    def __init__(self, keys: Iterable[StaticKey], *, hash_secret: Callable[[str], str], loaded_at: datetime) -> None:
        self._by_hash: dict[str, KeyInfo] = {}
        self._principals: dict[str, Principal] = {}
        self._last_used: dict[str, datetime] = {}  # id -> last use, this process only
        for key in keys:
            values = validate(key.fields)
            check_budget(values)
            name = values["name"]
            if self.get(name) is not None:
                raise invalid_request(f"two static keys are named {name!r}", "name")
            info = KeyInfo(
                id=static_key_id(name), name=name, hint="", models=tuple(values.get("models", ("*",))),
                expires_at=values.get("expires_at"), rpm=values.get("rpm"), tpm=values.get("tpm"),
                max_parallel=values.get("max_parallel"), budget_tokens=values.get("budget_tokens"),
                budget_cost=values.get("budget_cost"), budget_period=values.get("budget_period"),
                enabled=values.get("enabled", True), metadata=values.get("metadata") or {},
                created_at=loaded_at, last_used_at=None, source="config",
            )
            key_hash = hash_secret(key.secret)
            self._by_hash[key_hash] = info
            self._principals[key_hash] = info.principal()

    def find(self, key_hash: str) -> Principal | None:
        """The static key with this hash; each (there are few) compared in constant time."""
        found = None
        for stored, principal in self._principals.items():
            if hmac.compare_digest(stored, key_hash):
                found = principal
        return found

    def touch(self, key_id: str, when: datetime) -> None:
        self._last_used[key_id] = when

    def infos(self) -> list[KeyInfo]:
        """Every static key, in config order, with its last use by this process."""
        return [replace(info, last_used_at=self._last_used.get(info.id)) for info in self._by_hash.values()]

    def get(self, ref: str) -> KeyInfo | None:
        """A static key by id or name."""
        return next((info for info in self.infos() if ref in (info.id, info.name)), None)

    def refuse_name(self, name: str) -> None:
        """A stored key may not take a static key's name (people tell keys apart by name)."""
        if any(info.name == name for info in self._by_hash.values()):
            raise invalid_request(f"a key named {name!r} is set in the configuration; choose another name", "name")

    def refuse_changes(self, ref: str) -> None:
        """Static keys belong to the configuration: a 409 that says where to change them."""
        info = self.get(ref)
        if info is not None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"key {info.name!r} is set in the configuration "
                               "(auth.keys, --api-key or DRAGOMAN_API_KEY); change or remove it there",
                               status=409, code="key_in_config")
